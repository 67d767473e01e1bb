"""Export a prefilled stream's KV from one engine and import it into another.

Prefill/decode disaggregation moves a finished prefill to a decode server: the
KV of every prompt position (per layer K and V, read from SGLang's
``MHATokenToKVPool`` at the stream's slots) and the first sampled token. The
decode side allocates slots in its own pool through its own ``StreamKVCache``
(so the streaming radix tree indexes the imported tokens exactly as if it had
computed them), writes the buffers and commits the tokens. Because the engine's
KV layout is SGLang's (``k_buffer[layer][slot] -> [heads, head_dim]``) the copy
is a gather on one side and a scatter on the other, nothing model specific.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from radix_stream import KVCapacityError, StreamKVCache


class KVImportError(RuntimeError):
    """A transfer that does not fit the receiving engine (shape, dtype, room)."""


@dataclass
class StreamKV:
    """One stream's prefill result in transit: what the decode side needs."""

    rid: str
    token_ids: list[int]  # prompt tokens whose KV is carried (positions 0..n-1)
    first_token: int  # sampled after the last prompt token
    sampling_params: dict[str, Any] = field(default_factory=dict)
    k: list[torch.Tensor] = field(default_factory=list)  # per layer [n, kv_heads, head_dim]
    v: list[torch.Tensor] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. prefill timings, ttft

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def layers(self) -> int:
        return len(self.k)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


def pool_layout(pool: Any) -> tuple[int, tuple[int, ...], torch.dtype]:
    """(layers, per-token shape, dtype) of an SGLang MHA KV pool."""
    kb = pool.k_buffer
    return len(kb), tuple(kb[0].shape[1:]), kb[0].dtype


def export_stream(
    pool: Any,
    kv: StreamKVCache,
    rid: str,
    first_token: int,
    sampling_params: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> StreamKV:
    """Gather ``rid``'s resident KV (positions ``[0, computed)``) into contiguous
    CPU tensors. The stream stays open on this side; the caller closes it (and
    keeps it cached for prefix reuse) once the transfer is acknowledged."""
    if not kv.is_resident(rid):
        raise KVImportError(f"{rid}: KV is not resident (preempted?); cannot export")
    slots = kv.slots(rid)
    tokens = kv.token_ids(rid)
    dev = pool.k_buffer[0].device
    idx = slots.to(dev, torch.int64)
    # index_select gathers into a new contiguous tensor; .cpu() is a no-op on CPU
    k = [
        pool.k_buffer[i].index_select(0, idx).cpu().contiguous() for i in range(len(pool.k_buffer))
    ]
    v = [
        pool.v_buffer[i].index_select(0, idx).cpu().contiguous() for i in range(len(pool.v_buffer))
    ]
    return StreamKV(
        rid, tokens, int(first_token), dict(sampling_params or {}), k, v, dict(meta or {})
    )


def check_compatible(pool: Any, skv: StreamKV) -> None:
    """Raise KVImportError unless ``skv`` has this pool's layer count, shape and dtype."""
    layers, shape, dtype = pool_layout(pool)
    if skv.layers != layers or len(skv.v) != layers:
        raise KVImportError(f"{skv.rid}: {skv.layers} K / {len(skv.v)} V layers, pool has {layers}")
    want = (skv.n_tokens, *shape)
    for name, bufs in (("K", skv.k), ("V", skv.v)):
        for i, t in enumerate(bufs):
            if tuple(t.shape) != want or t.dtype != dtype:
                raise KVImportError(
                    f"{skv.rid}: {name}[{i}] is {tuple(t.shape)} {t.dtype}, expected {want} {dtype}"
                )


def import_stream(pool: Any, kv: StreamKVCache, skv: StreamKV, extra_key: str | None = None) -> int:
    """Open ``skv.rid`` in ``kv`` with its prompt KV resident; returns how many
    positions were adopted from this side's prefix cache instead of copied.

    Positions the decode side already caches (a shared template, an earlier
    request) are matched with ``reuse_prefix`` and not written; the rest get
    fresh slots. On any failure the stream is closed again, leaving no KV held.
    """
    check_compatible(pool, skv)
    kv.open(skv.rid, extra_key)
    try:
        reused = kv.reuse_prefix(skv.rid, skv.token_ids)
        rest = skv.n_tokens - reused
        if rest:
            try:
                slots = kv.reserve(skv.rid, rest)
            except KVCapacityError as exc:
                raise KVImportError(f"{skv.rid}: {exc}") from exc
            if slots is None:
                raise KVImportError(f"{skv.rid}: no room for {rest} tokens of imported KV")
            dev = pool.k_buffer[0].device
            idx = slots.to(dev, torch.int64)
            for i in range(skv.layers):
                pool.k_buffer[i].index_copy_(0, idx, skv.k[i][reused:].to(dev))
                pool.v_buffer[i].index_copy_(0, idx, skv.v[i][reused:].to(dev))
            kv.commit(skv.rid, skv.token_ids[reused:])
        return reused
    except BaseException:
        try:
            kv.cancel(skv.rid)
        except Exception:  # noqa: BLE001  (nothing reserved)
            pass
        kv.close(skv.rid, keep_cache=False)
        raise
