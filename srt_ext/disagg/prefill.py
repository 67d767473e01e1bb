"""The prefill server's worker: the single-server WorkerCore plus a hand-off.

Everything up to the first token is the ordinary streaming worker (chunks,
scheduler, preemption). When a final stream samples its first token, its KV
(the prompt positions) is exported, the stream leaves the local scheduler, and
the KV goes to the decode server over ``KVSender``. Tokens the decode server
streams back are turned into the same ``TokenEvent``/``FinishedEvent`` messages
the single server emits, so the API room (and every client) cannot tell the
difference: the prefill server is the one public endpoint. A rejected transfer
or a silent decode server becomes a ``StreamError`` for that request.

Hook used: ``WorkerCore.step``/``handle``/``has_work`` are overridden here (no
edit to the runtime); ``srt_ext.worker.process.serve(cfg, core)`` runs this core.
"""

from __future__ import annotations

import queue
import time
from typing import Any

from srt_ext import messages as m
from srt_ext.disagg.export import KVImportError, export_stream
from srt_ext.disagg.link import KVSender
from srt_ext.worker.core import WorkerCore


class PrefillWorkerCore(WorkerCore):
    """WorkerCore that hands finished prefills to a decode server at ``decode_addr``."""

    def __init__(self, engine: Any, decode_addr: str, *args: Any,
                 ack_timeout_s: float = 30.0, dead_after_s: float = 10.0, **kw: Any) -> None:  # fmt: skip
        super().__init__(engine, *args, **kw)
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.sender = KVSender(decode_addr, self._inbox.put, ack_timeout_s, dead_after_s)
        self._remote: set[str] = set()  # rids decoding on the decode server
        self.handoffs = 0

    def has_work(self) -> bool:
        return super().has_work() or bool(self._remote) or not self._inbox.empty()

    def handle(self, msg: Any) -> tuple[Any, list[Any]]:
        if isinstance(msg, m.Abort) and msg.rid in self._remote:
            self.sender.abort(msg.rid)
            self._remote.discard(msg.rid)
            r = self.reqs.pop(msg.rid)
            done = m.FinishedEvent(msg.rid, time.time(), "abort", None, r.prompt_tokens,
                                   r.outputs, r.cached_at_final, r.final_t, r.first_t)  # fmt: skip
            return m.ChunkReply(msg.req_id, msg.rid, r.prompt_tokens, 0, 0), [done]
        if isinstance(msg, (m.OpenStream, m.Generate)) and msg.rid in self._remote:
            return m.ErrorReply(msg.req_id, msg.rid, 409, f"{msg.rid} is still decoding"), []
        return super().handle(msg)

    def step(self) -> tuple[int, list[Any]]:
        n, events = super().step() if super().has_work() else (0, [])
        done = {e.rid for e in events if not isinstance(e, m.TokenEvent)}
        for e in events:
            if isinstance(e, m.TokenEvent) and e.first and e.rid not in done:
                err = self._handoff(e.rid, e.token)
                if err is not None:
                    events.append(err)
        return n, events + self._drain()

    def _handoff(self, rid: str, first: int) -> m.StreamError | None:
        r = self.reqs[rid]
        sp = r.spec
        params = {"max_new_tokens": sp.max_new_tokens, "temperature": sp.temperature,
                  "top_p": sp.top_p, "top_k": sp.top_k, "seed": r.seed,
                  "ignore_eos": sp.ignore_eos, "stop_token_ids": list(sp.stop_token_ids)}  # fmt: skip
        try:
            skv = export_stream(self.engine.pool, self.kv, rid, first, params)
        except KVImportError as exc:
            self.sched.abort(rid)
            self.reqs.pop(rid, None)
            return m.StreamError(rid, 500, f"prefill hand-off failed: {exc}", time.time())
        self.sched.release(rid)  # the KV copy travels; the local copy stays as prefix cache
        self._remote.add(rid)
        self.handoffs += 1
        self.sender.submit(skv)
        return None

    def _drain(self) -> list[Any]:
        out: list[Any] = []
        while True:
            try:
                ev = self._inbox.get_nowait()
            except queue.Empty:
                return out
            rid = ev.get("rid")
            if not isinstance(rid, str) or rid not in self._remote:
                continue
            r = self.reqs.get(rid)
            if r is None or ev["type"] == "ack":
                continue
            now = time.time()
            if ev["type"] in ("nack", "error") or ev.get("error"):
                out.append(m.StreamError(rid, 503, str(ev.get("error")), now))
                self._forget(rid)
                continue
            for tok in ev.get("output_ids", []):
                r.outputs += 1
                r.last = int(tok)
                out.append(m.TokenEvent(rid, int(tok), now, False))
            if ev.get("finished"):
                fr = ev.get("finish_reason") or {}
                reason: m.FinishReason = "stop" if fr.get("type") == "stop" else "length"
                out.append(m.FinishedEvent(rid, now, reason, fr.get("matched"), r.prompt_tokens,
                                           r.outputs, r.cached_at_final, r.final_t, r.first_t))  # fmt: skip
                self._forget(rid)

    def _forget(self, rid: str) -> None:
        self._remote.discard(rid)
        self.reqs.pop(rid, None)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["disagg_handoffs"] = self.handoffs
        out["disagg_decoding"] = len(self._remote)
        return out

    def close(self) -> None:
        self.sender.close()
