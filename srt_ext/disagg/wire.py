"""The wire format of a KV transfer between a prefill and a decode server.

Frames (pyzmq multipart)::

    prefill -> decode   [MAGIC, header, K0, V0, K1, V1, ...]   header: orjson
    decode  -> prefill  [MAGIC, event]       ack | nack | tokens | heartbeat

The header names the request (rid, token ids, first token, sampling params)
and describes every buffer (dtype, shape, layer count, byte count, CRC32), so
the receiver rejects a short, reshaped or corrupted transfer with a clear
error before touching its KV pool. Buffers go out as zero-copy memoryviews of
contiguous CPU tensors and come in as frames viewed by ``torch.frombuffer``.
The sockets and threads that carry these frames are in :mod:`srt_ext.disagg.link`.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import orjson
import torch

from srt_ext.disagg.export import StreamKV

MAGIC = b"S2L-KV1"
Event = dict[str, Any]


class TransferError(ValueError):
    """A transfer that is incomplete or inconsistent (counts, shapes, checksums)."""


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise TransferError(f"unknown dtype {name!r}")
    return dt


def _raw(t: torch.Tensor) -> memoryview:
    """Zero-copy byte view of a contiguous CPU tensor (any dtype, bf16 included)."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise TransferError("buffers must be contiguous CPU tensors")
    return t.reshape(-1).view(torch.uint8).numpy().data


def encode(skv: StreamKV) -> list[Any]:
    """Frames for one stream's KV: ``[MAGIC, header, K0, V0, ...]``."""
    bufs = [b for pair in zip(skv.k, skv.v, strict=True) for b in pair]
    views = [_raw(t) for t in bufs]
    t0 = bufs[0] if bufs else torch.empty(0)
    header = {
        "type": "kv",
        "rid": skv.rid,
        "token_ids": skv.token_ids,
        "first_token": skv.first_token,
        "sampling_params": skv.sampling_params,
        "meta": skv.meta,
        "dtype": str(t0.dtype),
        "shape": list(t0.shape),
        "layers": skv.layers,
        "nbytes": [v.nbytes for v in views],
        "crc32": [zlib.crc32(v) for v in views],
    }
    return [MAGIC, orjson.dumps(header), *views]


def decode(frames: list[Any]) -> StreamKV:
    """Check and rebuild a StreamKV from received frames (raises TransferError)."""
    if len(frames) < 2 or bytes(frames[0]) != MAGIC:
        raise TransferError("not a stream2llm KV transfer (bad magic)")
    try:
        h = orjson.loads(bytes(frames[1]))
        rid, layers, shape = str(h["rid"]), int(h["layers"]), tuple(int(s) for s in h["shape"])
        token_ids = [int(t) for t in h["token_ids"]]
        nbytes, crcs = list(h["nbytes"]), list(h["crc32"])
        dtype = _dtype(str(h["dtype"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TransferError(f"malformed transfer header: {exc}") from exc
    body = frames[2:]
    if len(body) != 2 * layers or len(nbytes) != len(body) or len(crcs) != len(body):
        raise TransferError(
            f"{rid}: {len(body)} buffers for {layers} layers (header lists {len(nbytes)})"
        )
    if layers and (not shape or shape[0] != len(token_ids)):
        raise TransferError(f"{rid}: shape {shape} does not cover {len(token_ids)} tokens")
    want = int(torch.Size(shape).numel()) * torch.empty(0, dtype=dtype).element_size()
    tensors: list[torch.Tensor] = []
    for i, f in enumerate(body):
        buf = f.buffer if hasattr(f, "buffer") else memoryview(f)
        if buf.nbytes != nbytes[i] or buf.nbytes != want:
            raise TransferError(f"{rid}: buffer {i} has {buf.nbytes} bytes, expected {want}")
        if zlib.crc32(buf) != crcs[i]:
            raise TransferError(f"{rid}: buffer {i} fails its checksum (corrupted in transit)")
        with warnings.catch_warnings():  # read-only frame: we only ever read it
            warnings.simplefilter("ignore", UserWarning)
            raw = (
                torch.frombuffer(buf, dtype=torch.uint8)
                if want
                else torch.empty(0, dtype=torch.uint8)
            )
        tensors.append(raw.view(dtype).reshape(shape))
    return StreamKV(
        rid, token_ids, int(h["first_token"]), dict(h.get("sampling_params") or {}),
        tensors[0::2], tensors[1::2], dict(h.get("meta") or {}),
    )  # fmt: skip
