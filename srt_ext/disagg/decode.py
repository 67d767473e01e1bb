"""The decode server's engine loop: import transferred KV, decode, stream tokens back.

A decode server needs no streaming scheduler: every request arrives with its
whole prompt already computed, so the loop only imports KV (``import_stream``)
and runs batched decode steps over everything active, one token per request
per step. Tokens go back to the prefill server after every step (it forwards
them to the client), so time-to-first-token is set by the prefill side and the
decode side only adds its per-token latency.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from radix_stream import StreamKVCache
from srt_ext.disagg.export import KVImportError, StreamKV, import_stream
from srt_ext.disagg.link import KVReceiver
from srt_ext.engines.reference import ForwardItem, ReferenceEngine


@dataclass
class _Req:
    rid: str
    params: dict[str, Any]
    out: list[int] = field(default_factory=list)
    sent: int = 0  # tokens already streamed back (the first came from prefill)
    t_import: float = 0.0


def finish_reason(params: dict[str, Any], out: list[int], eos: tuple[int, ...]) -> dict | None:
    """SGLang-style finish reason once ``out`` is complete, else None."""
    if (
        out
        and not params.get("ignore_eos")
        and (out[-1] in eos or out[-1] in (params.get("stop_token_ids") or ()))
    ):
        return {"type": "stop", "matched": out[-1]}
    if len(out) >= int(params.get("max_new_tokens", 16)):
        return {"type": "length", "length": len(out)}
    return None


class DecodeWorker:
    """Owns an engine and its StreamKVCache; fed by a KVReceiver bound at ``endpoint``."""

    def __init__(self, engine: ReferenceEngine, endpoint: str, max_batch: int = 64) -> None:
        self.engine = engine
        self.kv = StreamKVCache(engine.allocator, page_size=1)
        self.max_batch = max_batch
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._active: dict[str, _Req] = {}
        self.stats = {"imported": 0, "rejected": 0, "finished": 0, "reused_tokens": 0}
        self._stop = threading.Event()
        self.receiver = KVReceiver(
            endpoint,
            on_transfer=lambda skv: self._inbox.put(("kv", skv)),
            on_abort=lambda rid: self._inbox.put(("abort", rid)),
        )
        self.endpoint = self.receiver.endpoint
        self._thread = threading.Thread(target=self._run, name="decode-worker", daemon=True)
        self._thread.start()

    # --- engine thread -----------------------------------------------------------
    def _admit(self, skv: StreamKV) -> None:
        rx = self.receiver
        if skv.rid in self._active:
            rx.nack(skv.rid, f"{skv.rid}: already decoding here")
            return
        try:
            reused = import_stream(self.engine.pool, self.kv, skv)
        except KVImportError as exc:
            self.stats["rejected"] += 1
            rx.nack(skv.rid, f"decode server cannot import: {exc}")
            return
        self.stats["imported"] += 1
        self.stats["reused_tokens"] += reused
        rx.ack(skv.rid, reused_tokens=reused)
        req = _Req(skv.rid, skv.sampling_params, [skv.first_token], sent=1, t_import=time.time())
        self._active[skv.rid] = req
        self._maybe_finish(req)

    def _maybe_finish(self, req: _Req) -> None:
        why = finish_reason(req.params, req.out, self.engine.eos_token_ids)
        new = req.out[req.sent :]
        req.sent = len(req.out)
        if why is None:
            if new:
                self.receiver.tokens(req.rid, new, False)
            return
        self._close(req.rid, keep_cache=True)  # KV freed before the client hears "done"
        self.stats["finished"] += 1
        self.receiver.tokens(req.rid, new, True, finish_reason=why, decode_tokens=len(req.out) - 1)

    def _close(self, rid: str, keep_cache: bool) -> None:
        if self._active.pop(rid, None) is not None:
            self.kv.cancel(rid)  # a reservation left by a failed step
            self.kv.close(rid, keep_cache=keep_cache)

    def _step(self) -> None:
        reqs = list(self._active.values())[: self.max_batch]
        items, ready = [], []
        for r in reqs:
            start = self.kv.computed(r.rid)
            slots = self.kv.reserve(r.rid, 1)
            if slots is None:  # out of KV: fail it rather than stall everyone
                self.receiver.tokens(r.rid, [], True, error="decode server out of KV memory")
                self._close(r.rid, keep_cache=False)
                continue
            p = r.params
            items.append(ForwardItem(
                r.rid, [r.out[-1]], start, self.kv.slots(r.rid), slots, sample=True,
                temperature=float(p.get("temperature", 0.0)), seed=p.get("seed"),
                top_p=float(p.get("top_p", 1.0)), top_k=max(0, int(p.get("top_k", 0) or 0)),
            ))  # fmt: skip
            ready.append(r)
        if not items:
            return
        toks = self.engine.forward(items)
        for r, it, tok in zip(ready, items, toks, strict=True):
            self.kv.commit(r.rid, it.input_ids)
            r.out.append(int(tok))  # type: ignore[arg-type]
            self._maybe_finish(r)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                block = not self._active
                kind, obj = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
                if kind == "kv":
                    self._admit(obj)
                else:
                    self._close(obj, keep_cache=False)
                continue
            except queue.Empty:
                pass
            if self._active:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001  (fail the requests, keep serving)
                    for rid in list(self._active):
                        self.receiver.tokens(rid, [], True, error=f"decode step failed: {exc!r}")
                        self._close(rid, keep_cache=False)

    def health(self) -> dict[str, Any]:
        st = self.kv.stats()
        return {"active": len(self._active), "kv_used_tokens": st.used, **self.stats}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.receiver.close()
