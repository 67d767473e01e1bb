"""A transfer engine that moves byte ranges between two SGLang processes over ZMQ.

SGLang's Mooncake KV manager drives its transfer engine through five calls:
``batch_register(ptrs, lens)`` / ``batch_deregister(ptrs)`` (the memory a peer may
write into), ``get_session_id()`` (the address a peer reaches this process at),
``batch_transfer_sync(session, srcs, dsts, lens)`` (copy local ``srcs`` into the
peer's ``dsts``; 0 or a negative error code) and ``send_probe(session)``.
:class:`ZmqTransferEngine` implements them with plain TCP sockets, so the KV pool
may live in host memory (a CPU KV pool: SGLang's RDMA engines need a NIC and
device memory).

Wire (one DEALER per sending thread and peer, one ROUTER per process):

* write: ``[b"W", seq, header, block_0, ..., block_n]``; ``header`` is
  ``struct`` ``n, (dst, len) * n``; each block is sent zero-copy from the source
  address. The receiver checks every ``[dst, dst+len)`` lies inside memory it
  registered, copies the blocks in and answers ``[seq, b"ok"]`` (or
  ``[seq, b"err", reason]``; nothing is written then).
* uniform write (8 or more blocks of one length, i.e. KV pages):
  ``[b"U", seq, struct n, len, dst * n, payload]``; the sender gathers the blocks
  with one numpy take per registered source region, the receiver scatters them
  the same way, after checking every block lies in a region it registered.
* probe: ``[b"P", seq]`` -> ``[seq, b"ok"]``.

``batch_transfer_sync`` returns only after the peer's answer, i.e. after the bytes
are in the peer's memory: SGLang reports the transfer done on its own socket next,
so the decode side never reads pages that are still in flight.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import logging
import os
import struct
import threading
import time
from typing import Any

import numpy as np
import zmq

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "STREAM2LLM_ZMQ_KV_TIMEOUT_S"
ERR_TIMEOUT = -2
ERR_REJECTED = -3
ERR_SEND = -4
UNIFORM_MIN_BLOCKS = 8  # from this many blocks of one length: the gathered path


def _u8(addr: int, length: int) -> np.ndarray:
    """A writable uint8 view of ``length`` bytes at ``addr`` (no copy)."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(addr))


class _Regions:
    """Registered ``[ptr, ptr+len)`` ranges; ``covers`` answers range checks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, ptr: int, length: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, ptr)
            if i < len(self._starts) and self._starts[i] == ptr:
                self._ends[i] = max(self._ends[i], ptr + length)
                return
            self._starts.insert(i, ptr)
            self._ends.insert(i, ptr + length)

    def remove(self, ptr: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, ptr)
            if i < len(self._starts) and self._starts[i] == ptr:
                del self._starts[i], self._ends[i]

    def covers(self, addr: int, length: int) -> bool:
        with self._lock:
            i = bisect.bisect_right(self._starts, addr) - 1
            return i >= 0 and addr + length <= self._ends[i]

    def __len__(self) -> int:
        return len(self._starts)

    def rows(self, addrs: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For blocks of ``length`` bytes at ``addrs``: (region index, row index) when
        each lies inside a region at a multiple of ``length`` from its start (KV
        pages of one layer buffer are), else None."""
        with self._lock:
            starts = np.asarray(self._starts, dtype=np.uint64)
            ends = np.asarray(self._ends, dtype=np.uint64)
        if len(starts) == 0:
            return None
        a = addrs.astype(np.uint64)
        reg = np.searchsorted(starts, a, side="right").astype(np.int64) - 1
        if (reg < 0).any():
            return None
        off = a - starts[reg]
        if (off % np.uint64(length)).any() or (a + np.uint64(length) > ends[reg]).any():
            return None
        return reg, (off // np.uint64(length)).astype(np.int64)

    def view2d(self, reg: int, length: int) -> np.ndarray:
        with self._lock:
            start, end = self._starts[reg], self._ends[reg]
        n = (end - start) // length
        return _u8(start, n * length).reshape(n, length)


class ZmqTransferEngine:
    """One per KV manager (scheduler process); see the module docstring."""

    def __init__(self, host: str, timeout_s: float | None = None) -> None:
        self.host = host
        self.timeout_s = float(os.environ.get(TIMEOUT_ENV, "30")) if timeout_s is None \
            else timeout_s  # fmt: skip
        self.regions = _Regions()
        self._ctx = zmq.Context.instance()
        self._server = self._ctx.socket(zmq.ROUTER)
        self._server.setsockopt(zmq.LINGER, 0)
        bind_host = f"[{host}]" if ":" in host else host
        port = self._server.bind_to_random_port(f"tcp://{bind_host}")
        if ":" in host:
            self._server.setsockopt(zmq.IPV6, 1)
        self.session_id = f"{host}:{port}"
        self._local = threading.local()
        self._seq = itertools.count(1)
        self._stopped = False
        # counters (read by tests and the bench through the log line / attributes)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.transfers_sent = 0
        self.send_seconds = 0.0
        self._thread = threading.Thread(target=self._serve, name="s2l-zmq-kv", daemon=True)
        self._thread.start()
        logger.info("stream2llm zmq KV engine listening at %s", self.session_id)

    # ---- the Mooncake engine surface ------------------------------------
    def get_session_id(self) -> str:
        return self.session_id

    def batch_register(self, ptrs: list[int], lens: list[int]) -> int:
        for p, n in zip(ptrs, lens, strict=True):
            if n > 0:
                self.regions.add(int(p), int(n))
        return 0

    def register(self, ptr: int, length: int) -> int:
        return self.batch_register([ptr], [length])

    def batch_deregister(self, ptrs: list[int]) -> int:
        for p in ptrs:
            self.regions.remove(int(p))
        return 0

    def deregister(self, ptr: int) -> int:
        return self.batch_deregister([ptr])

    def batch_transfer_sync(self, session_id: str, srcs: list[int], dsts: list[int],
                            lens: list[int]) -> int:  # fmt: skip
        n = len(srcs)
        if n == 0:
            return 0
        if n >= UNIFORM_MIN_BLOCKS and len(set(lens)) == 1:
            rc = self._transfer_uniform(session_id, srcs, dsts, int(lens[0]))
            if rc is not None:
                return rc
        for s, ln in zip(srcs, lens, strict=True):
            if not self.regions.covers(int(s), int(ln)):
                logger.error("zmq KV engine: source [%#x, +%d) is not registered", s, ln)
                return ERR_REJECTED
        header = struct.pack(f"<I{2 * n}Q", n, *itertools.chain.from_iterable(
            (int(d), int(ln)) for d, ln in zip(dsts, lens, strict=True)))  # fmt: skip
        blocks = [memoryview((ctypes.c_uint8 * int(ln)).from_address(int(s)))
                  for s, ln in zip(srcs, lens, strict=True)]  # fmt: skip
        return self._send_write(session_id, [b"W", header, *blocks], sum(int(x) for x in lens))

    def _transfer_uniform(self, session_id: str, srcs: list[int], dsts: list[int],
                          length: int) -> int | None:  # fmt: skip
        """Many blocks of one length (KV pages): gathered into one payload with one
        numpy take per source region, scattered the same way on arrival. None:
        not page-aligned in registered regions (the per-block path decides)."""
        n = len(srcs)
        found = self.regions.rows(np.asarray(srcs, dtype=np.uint64), length)
        if found is None:
            return None
        reg, rows = found
        payload = np.empty((n, length), dtype=np.uint8)
        for r in np.unique(reg):
            mask = reg == r
            payload[mask] = self.regions.view2d(int(r), length)[rows[mask]]
        header = struct.pack("<IQ", n, length) + np.asarray(dsts, dtype="<u8").tobytes()
        return self._send_write(session_id, [b"U", header, payload], n * length)

    def _send_write(self, session_id: str, frames: list[Any], nbytes: int) -> int:
        """Send one write request and wait for the peer's ack: 0, or why it failed."""
        t0 = time.perf_counter()
        reply = self._request(session_id, frames)
        if reply is None:
            return ERR_TIMEOUT
        if reply[0] != b"ok":
            logger.error("zmq KV engine: %s refused a write: %s", session_id,
                         b" ".join(reply[1:]).decode(errors="replace"))  # fmt: skip
            return ERR_REJECTED
        self.send_seconds += time.perf_counter() - t0
        self.bytes_sent += nbytes
        self.transfers_sent += 1
        return 0

    def transfer_sync(self, session_id: str, src: int, dst: int, length: int) -> int:
        return self.batch_transfer_sync(session_id, [src], [dst], [length])

    def send_probe(self, session_id: str) -> int:
        reply = self._request(session_id, [b"P"])
        return 0 if reply is not None and reply[0] == b"ok" else ERR_TIMEOUT

    def close(self) -> None:
        self._stopped = True

    # ---- client side ----------------------------------------------------
    def _socket(self, session_id: str) -> zmq.Socket:
        socks = getattr(self._local, "socks", None)
        if socks is None:
            socks = self._local.socks = {}
        sock = socks.get(session_id)
        if sock is None:
            host, _, port = session_id.rpartition(":")
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if ":" in host:
                sock.setsockopt(zmq.IPV6, 1)
                host = f"[{host.strip('[]')}]"
            sock.connect(f"tcp://{host}:{port}")
            socks[session_id] = sock
        return sock

    def _drop_socket(self, session_id: str) -> None:
        sock = self._local.socks.pop(session_id, None)
        if sock is not None:
            sock.close(0)

    def _request(self, session_id: str, frames: list) -> list[bytes] | None:
        """Send ``frames`` (the seq goes second) and wait for the matching answer;
        None after ``timeout_s`` (the socket is dropped: a late answer is never
        mistaken for the next one's)."""
        seq = struct.pack("<Q", next(self._seq))
        sock = self._socket(session_id)
        try:
            sock.send_multipart([frames[0], seq, *frames[1:]], copy=False)
        except zmq.ZMQError as e:
            logger.error("zmq KV engine: send to %s failed: %s", session_id, e)
            self._drop_socket(session_id)
            return None
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                logger.error("zmq KV engine: no answer from %s within %.1f s",
                             session_id, self.timeout_s)  # fmt: skip
                self._drop_socket(session_id)
                return None
            msg = sock.recv_multipart()
            if msg and msg[0] == seq:
                return msg[1:]

    # ---- server side ----------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._server, zmq.POLLIN)
        while not self._stopped:
            if not poller.poll(500):
                continue
            msg = self._server.recv_multipart(copy=False)
            ident, kind, seq = msg[0].bytes, msg[1].bytes, msg[2].bytes
            try:
                if kind == b"P":
                    answer = [b"ok"]
                elif kind == b"W":
                    answer = self._write(msg[3].bytes, msg[4:])
                elif kind == b"U" and len(msg) == 5:
                    answer = self._write_uniform(msg[3].bytes, msg[4].buffer)
                else:
                    answer = [b"err", b"unknown message " + kind[:8]]
            except Exception as e:  # a malformed message must not stop the server
                logger.exception("zmq KV engine: bad message")
                answer = [b"err", str(e).encode()[:200]]
            self._server.send_multipart([ident, seq, *answer])

    def _write_uniform(self, header: bytes, payload: Any) -> list[bytes]:
        n, length = struct.unpack_from("<IQ", header)
        if len(header) != 12 + 8 * n or len(payload) != n * length or length == 0:
            return [b"err", f"uniform write of {n} x {length}: sizes do not match".encode()]
        dsts = np.frombuffer(header, dtype="<u8", offset=12, count=n)
        data = np.frombuffer(payload, dtype=np.uint8).reshape(n, length)
        found = self.regions.rows(dsts, length)
        if found is None:  # not page-aligned: block by block, each checked
            for d in dsts.tolist():
                if not self.regions.covers(d, length):
                    return [b"err", f"[{d:#x}, +{length}) is not registered memory".encode()]
            for i, d in enumerate(dsts.tolist()):
                _u8(d, length)[:] = data[i]
            self.bytes_received += n * length
            return [b"ok"]
        reg, rows = found
        for r in np.unique(reg):
            mask = reg == r
            self.regions.view2d(int(r), length)[rows[mask]] = data[mask]
        self.bytes_received += n * length
        return [b"ok"]

    def _write(self, header: bytes, blocks: list) -> list[bytes]:
        (n,) = struct.unpack_from("<I", header)
        if len(blocks) != n or len(header) != 4 + 16 * n:
            return [b"err", f"{len(blocks)} blocks for a header of {n}".encode()]
        pairs = struct.unpack_from(f"<{2 * n}Q", header, 4)
        dsts, lens = pairs[0::2], pairs[1::2]
        for d, ln, b in zip(dsts, lens, blocks, strict=True):
            if len(b.buffer) != ln:
                return [b"err", f"block of {len(b.buffer)} bytes, header says {ln}".encode()]
            if not self.regions.covers(d, ln):
                return [b"err", f"[{d:#x}, +{ln}) is not registered memory".encode()]
        for d, ln, b in zip(dsts, lens, blocks, strict=True):
            _u8(d, ln)[:] = np.frombuffer(b.buffer, dtype=np.uint8)
        self.bytes_received += sum(lens)
        return [b"ok"]
