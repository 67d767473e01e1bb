"""What the HTTP routes do, kept apart from FastAPI so the routes stay thin.

``Service`` tokenizes, checks what needs the API room's state (unknown or
duplicate rid, chunk after final and mode mix-ups, i.e. ordering, and the client
limits), forwards to the worker through ``WorkerLink`` and shapes results in
SGLang's ``/generate`` format. Each rule is checked once: token ids against the
vocabulary, context length, empty chunks and when sampling parameters may come
are the worker's (``WorkerCore``), which refuses them before its state changes;
a refused open removes its API state again, so bad input leaves the worker and
the stats untouched.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from srt_ext import messages as m
from srt_ext.api.limits import Limits
from srt_ext.api.metrics import Metrics
from srt_ext.api.models import ChunkRequest, GenerateRequest, OpenStreamRequest, SamplingParamsModel
from srt_ext.api.req_state import ReqState, WorkerError
from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.api.worker_link import WorkerLink


class Service:
    def __init__(self, link: WorkerLink, tok: TokenizerRoom, metrics: Metrics,
                 health_timeout: float = 10.0, limits: Limits | None = None) -> None:  # fmt: skip
        self.link, self.tok, self.metrics = link, tok, metrics
        self.health_timeout = health_timeout
        self.limits = limits or Limits()
        link.decode = tok.decode
        link.on_first_token = self._first_token
        link.on_finished = self._finished

    # ---- streams ----------------------------------------------------------------
    def _ids(self, text: str | None, ids: list[int] | None, first: bool) -> list[int]:
        """Token ids as given (the worker checks them against its vocabulary) or encoded."""
        if ids is not None:
            return list(ids)
        return self.tok.encode(text or "", first=first)

    async def open_stream(self, req: OpenStreamRequest, client: str = "") -> tuple[str, m.ChunkReply]:
        w0 = time.time()
        rid = req.rid or uuid.uuid4().hex
        if rid in self.link.states:
            raise WorkerError(409, f"stream {rid} already exists")
        self.limits.check_streams(self.link.states.values(), client)
        has_input = req.text is not None or req.input_ids is not None
        ids = self._ids(req.text, req.input_ids, first=True) if has_input else None
        self.limits.check_input(len(ids or ()))
        st = ReqState(rid, req.mode, time.monotonic(), stop=req.sampling_params.stop_strings(),
                      client=client)  # fmt: skip
        if req.final:
            st.mark_final(st.created, w0, len(ids or ()))
        msg = m.OpenStream(self.link.next_id(), rid, req.mode, req.sampling_params.spec(),
                           ids, req.final, time.time())  # fmt: skip
        return rid, await self._register(st, msg)

    async def _register(self, st: ReqState, msg: Any) -> m.ChunkReply:
        self.link.add_state(st)
        try:
            reply = await self.link.request(msg)
        except WorkerError:
            self.link.drop_state(st.rid)
            raise
        st.input_tokens = reply.input_tokens
        self.metrics.requests.labels("open").inc()
        return reply

    def get(self, rid: str) -> ReqState:
        st = self.link.states.get(rid)
        if st is None:
            raise WorkerError(404, f"unknown stream {rid}")
        return st

    async def add_chunk(self, rid: str, req: ChunkRequest) -> m.ChunkReply:
        """Apply one chunk. Chunks of one stream are serialized in arrival order by
        the stream's lock: without it two concurrent chunks could both tokenize as
        "first" or reach the worker in the other order."""
        t0, w0 = time.monotonic(), time.time()
        st = self.get(rid)
        st.last_active = t0
        async with st.lock:
            try:
                return await self._add_chunk(st, req, t0, w0)
            finally:
                st.last_active = time.monotonic()

    async def _add_chunk(self, st: ReqState, req: ChunkRequest, t0: float,
                         w0: float) -> m.ChunkReply:  # fmt: skip
        rid = st.rid
        if st.final or st.done:
            raise WorkerError(409, f"stream {rid} already received its final chunk")
        if req.mode is not None and req.mode != st.mode:
            raise WorkerError(409, f"stream {rid} is in {st.mode} mode; this chunk says {req.mode}")
        first = st.mode == "update" or st.input_tokens == 0
        ids = self._ids(req.text, req.input_ids, first=first)
        if not ids and req.final and st.mode == "update":  # (non-final: the worker's rule)
            raise WorkerError(400, "empty chunk (an update replaces the whole input)")
        self.limits.check_input(len(ids) + (st.input_tokens if st.mode == "append" else 0))
        spec = req.sampling_params.spec() if req.sampling_params is not None else None
        if req.final:  # claim "final" now: a racing chunk gets 409, not a reorder
            st.mark_final(t0, w0, len(ids))
        try:
            reply = await self.link.request(m.AddChunk(self.link.next_id(), rid, ids, req.final,
                                                       time.time(), spec))  # fmt: skip
        except WorkerError:
            if req.final:
                st.final, st.final_t = False, None
            raise
        st.input_tokens = reply.input_tokens
        if req.sampling_params is not None:
            st.stop = req.sampling_params.stop_strings()
        self.metrics.chunk_latency.observe(time.monotonic() - t0)
        return reply

    async def abort(self, rid: str) -> m.ChunkReply:
        st = self.get(rid)
        if st.done:
            self.link.drop_state(rid)
            return m.ChunkReply(0, rid, st.input_tokens, 0, 0)
        reply = await self.link.request(m.Abort(self.link.next_id(), rid))
        self.link.drop_state(rid)
        return reply

    # ---- one-shot -----------------------------------------------------------------
    async def generate(self, text: str | None, ids: list[int] | None,
                       sp: SamplingParamsModel, rid: str | None = None) -> ReqState:  # fmt: skip
        w0 = time.time()
        rid = rid or uuid.uuid4().hex
        if rid in self.link.states:
            raise WorkerError(409, f"request {rid} already exists")
        input_ids = self._ids(text, ids, first=True)
        if not input_ids:
            raise WorkerError(400, "empty input")
        self.limits.check_input(len(input_ids))
        st = ReqState(rid, "oneshot", time.monotonic(), stop=sp.stop_strings())
        st.mark_final(st.created, w0, len(input_ids))
        await self._register(st, m.Generate(self.link.next_id(), rid, input_ids, sp.spec(),
                                            time.time()))  # fmt: skip
        return st

    async def generate_req(self, req: GenerateRequest) -> ReqState:
        return await self.generate(req.text, req.input_ids, req.sampling_params, req.rid)

    # ---- results --------------------------------------------------------------------
    def text(self, st: ReqState) -> str:
        return st.text_override if st.text_override is not None else self.tok.decode(st.output_ids)

    def meta(self, st: ReqState) -> dict[str, Any]:
        f = st.finish
        info: dict[str, Any] = {
            "id": st.rid,
            "finish_reason": st.finish_reason,
            "prompt_tokens": f.prompt_tokens if f else st.input_tokens,
            "completion_tokens": len(st.output_ids),
            "cached_tokens": f.cached_tokens if f else 0,
            "ttft_s": _delta(st.final_t, st.first_token_t),
            "ttft_from_open_s": _delta(st.created, st.first_token_t),
            "e2e_latency": _delta(st.created, st.done_t),
        }
        if f is not None:
            info["worker_ttft_s"] = _delta(f.final_t, f.first_token_t)
            # wall-clock (time.time) stamps of the worker: with the client's own clock on
            # the same machine they split a TTFT into HTTP-in, worker and HTTP-out parts
            info["worker_final_at"] = f.final_t
            info["worker_first_token_at"] = f.first_token_t
        info.update(st.stamps)
        return info

    def result(self, st: ReqState) -> dict[str, Any]:
        if st.error is not None:
            raise st.error
        return {"text": self.text(st), "output_ids": list(st.output_ids), "meta_info": self.meta(st)}

    def take_result(self, st: ReqState) -> dict[str, Any]:
        """``result`` of a one-shot, forgetting it (nobody can ask for it again)."""
        self.link.drop_state(st.rid)
        return self.result(st)

    # ---- introspection -----------------------------------------------------------------
    async def flush_cache(self) -> int:
        """Free every cached prefix no live request holds (SGLang's /flush_cache)."""
        reply = await self.link.request(m.FlushCache(self.link.next_id()), timeout=30.0)
        return int(reply.stats["flushed_tokens"])

    async def stats(self) -> dict[str, Any]:
        reply = await self.link.request(m.StatsRequest(self.link.next_id()), timeout=30.0)
        self.metrics.update_kv(reply.stats)
        return dict(reply.stats)

    async def healthy(self) -> bool:
        if self.link.dead:
            return False
        try:
            await self.link.request(m.Ping(self.link.next_id()), timeout=self.health_timeout)
        except (TimeoutError, WorkerError):
            return False
        return True

    def _first_token(self, st: ReqState) -> None:
        if st.final_t is not None and st.first_token_t is not None:
            self.metrics.ttft.observe(st.first_token_t - st.final_t)

    def _finished(self, st: ReqState) -> None:
        reason = (st.finish_reason or {}).get("type", "error")
        self.metrics.finished.labels(reason).inc()
        self.metrics.output_tokens.inc(len(st.output_ids))


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, b - a)
