"""The ZMQ link between a prefill server (KVSender) and a decode server (KVReceiver).

DEALER -> ROUTER and back, one socket per side, each owned by one I/O thread; the
frames it carries (KV out, events back) are defined in :mod:`srt_ext.disagg.wire`.

Failure is bounded on both ends: ``send`` waits at most ``ack_timeout_s`` for
the import to be acknowledged, and while requests are in flight the decode
server heartbeats; silence longer than ``dead_after_s`` fails every in-flight
request with ``DecodeUnavailable`` (delivered as an ``error`` event) instead
of leaving its client waiting forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq

from srt_ext.disagg.export import StreamKV
from srt_ext.disagg.wire import MAGIC, Event, TransferError, decode, encode


class DecodeUnavailable(RuntimeError):
    """The decode server did not answer in time (dead, overloaded or unreachable)."""


class TransferRejected(RuntimeError):
    """The decode server refused the transfer (bad frames, no room, bad params)."""


class _Loop:
    """One socket owned by one I/O thread; other threads post frames through an
    inproc pipe (ZMQ sockets are not thread-safe)."""

    tick_s = 0.05

    def __init__(self, kind: int, endpoint: str, bind: bool, name: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(kind)
        self._sock.setsockopt(zmq.LINGER, 0)
        if bind:
            self._sock.bind(endpoint)
        else:
            self._sock.connect(endpoint)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        pipe = f"inproc://s2l-{name}-{id(self)}"
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(pipe)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.connect(pipe)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _post(self, frames: list[Any]) -> None:
        with self._lock:
            if not self._stop.is_set():
                self._push.send_multipart(frames, copy=False)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(int(self.tick_s * 1000)))
            if self._pull in ready:
                self._sock.send_multipart(self._pull.recv_multipart(copy=False), copy=False)
            if self._sock in ready:
                self._on_frames(self._sock.recv_multipart(copy=False))
            self._tick()

    def _on_frames(self, frames: list[Any]) -> None:  # pragma: no cover (abstract)
        raise NotImplementedError

    def _tick(self) -> None:
        """Periodic work (timeouts, heartbeats) on the I/O thread."""

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for s in (self._sock, self._pull, self._push):
            s.close(linger=0)
        self._ctx.term()


@dataclass
class _Pending:
    deadline: float  # ack deadline; inf once acknowledged
    done: threading.Event = field(default_factory=threading.Event)
    reply: Event | None = None


class KVSender(_Loop):
    """Prefill side: ships StreamKV to one decode server and relays its events
    (``ack``, ``nack``, ``tokens``, ``error``) to ``on_event(event)``, called on
    the I/O thread (keep it short: hand the event to your own queue)."""

    def __init__(
        self,
        endpoint: str,
        on_event: Callable[[Event], None] | None = None,
        ack_timeout_s: float = 30.0,
        dead_after_s: float = 10.0,
    ) -> None:
        super().__init__(zmq.DEALER, endpoint, bind=False, name="kv-sender")
        self.on_event = on_event or (lambda ev: None)
        self.ack_timeout_s, self.dead_after_s = ack_timeout_s, dead_after_s
        self._pending: dict[str, _Pending] = {}  # sent, not finished (I/O thread + lock)
        self._last_heard = time.monotonic()
        self.start()

    def submit(self, skv: StreamKV) -> _Pending:
        """Send without waiting; ``.done`` is set on ack, nack or timeout, with ``.reply``."""
        with self._lock:
            if skv.rid in self._pending:
                raise TransferRejected(f"{skv.rid}: already in flight")
            p = _Pending(time.monotonic() + self.ack_timeout_s)
            self._pending[skv.rid] = p
        self._post(encode(skv))
        return p

    def send(self, skv: StreamKV) -> Event:
        """Send and wait for the decode server to import it; returns the ack."""
        p = self.submit(skv)
        p.done.wait()
        reply = p.reply
        if reply is None or reply["type"] == "error":
            raise DecodeUnavailable(reply["error"] if reply else f"{skv.rid}: no reply")
        if reply["type"] == "nack":
            raise TransferRejected(reply["error"])
        return reply

    def abort(self, rid: str) -> None:
        self._post([MAGIC, orjson.dumps({"type": "abort", "rid": rid})])
        self._finish(rid, None)

    def in_flight(self) -> list[str]:
        return list(self._pending)

    def _finish(self, rid: str, reply: Event | None) -> None:
        with self._lock:
            p = self._pending.pop(rid, None)
        if p is not None and not p.done.is_set():
            p.reply = reply
            p.done.set()

    def _on_frames(self, frames: list[Any]) -> None:
        self._last_heard = time.monotonic()
        ev: Event = orjson.loads(bytes(frames[1]))
        kind, rid = ev.get("type"), ev.get("rid")
        if kind == "heartbeat" or rid is None:
            return
        p = self._pending.get(rid)
        if kind in ("ack", "nack") and p is not None:
            p.deadline, p.reply = float("inf"), ev
            p.done.set()
        if kind == "nack" or (kind == "tokens" and ev.get("finished")):
            with self._lock:
                self._pending.pop(rid, None)
        self.on_event(ev)

    def _tick(self) -> None:
        now = time.monotonic()
        silent = now - self._last_heard
        for rid, p in list(self._pending.items()):
            acked = p.deadline == float("inf")
            if not acked and now > p.deadline:
                why = f"decode server {self.endpoint} did not ack {rid} in {self.ack_timeout_s:g}s"
            elif acked and silent > self.dead_after_s:
                why = f"decode server {self.endpoint} silent for {silent:.1f}s (dead?)"
            else:
                continue
            err = {"type": "error", "rid": rid, "error": why}
            if not acked:  # it may still arrive later: tell the decode side to drop it
                self._sock.send_multipart([MAGIC, orjson.dumps({"type": "abort", "rid": rid})])
            self._finish(rid, err)
            self.on_event(err)
        if not self._pending:
            self._last_heard = now  # silence only counts while something is in flight


class KVReceiver(_Loop):
    """Decode side: validates transfers, hands them to ``on_transfer(skv)``
    (on the I/O thread; queue it for the engine loop) and sends events back to
    whichever prefill server sent each request. Bad transfers are nacked here."""

    heartbeat_s = 0.5

    def __init__(
        self,
        endpoint: str,
        on_transfer: Callable[[StreamKV], None],
        on_abort: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(zmq.ROUTER, endpoint, bind=True, name="kv-receiver")
        self.on_transfer, self.on_abort = on_transfer, on_abort or (lambda rid: None)
        self._peer: dict[str, bytes] = {}  # rid -> prefill identity
        self._last_beat = 0.0
        self.start()

    def _send(self, rid: str, ev: Event) -> None:
        peer = self._peer.get(rid)
        if peer is not None:
            self._post([peer, MAGIC, orjson.dumps(ev)])

    def ack(self, rid: str, **info: Any) -> None:
        self._send(rid, {"type": "ack", "rid": rid, **info})

    def nack(self, rid: str, error: str) -> None:
        self._send(rid, {"type": "nack", "rid": rid, "error": error})
        self._peer.pop(rid, None)

    def tokens(self, rid: str, output_ids: list[int], finished: bool, **meta: Any) -> None:
        ev = {"type": "tokens", "rid": rid, "output_ids": output_ids, "finished": finished, **meta}
        self._send(rid, ev)
        if finished:
            self._peer.pop(rid, None)

    def _on_frames(self, frames: list[Any]) -> None:
        peer, body = bytes(frames[0]), frames[1:]
        try:
            head = orjson.loads(bytes(body[1])) if len(body) > 1 else {}
        except orjson.JSONDecodeError:
            head = {}
        rid = str(head.get("rid", "?"))
        if head.get("type") == "abort":
            self._peer.pop(rid, None)
            self.on_abort(rid)
            return
        self._peer[rid] = peer
        try:
            skv = decode(body)
        except TransferError as exc:
            self.nack(rid, f"rejected transfer: {exc}")
            return
        self.on_transfer(skv)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            beat = orjson.dumps({"type": "heartbeat"})
            for peer in set(self._peer.values()):
                self._sock.send_multipart([peer, MAGIC, beat])
