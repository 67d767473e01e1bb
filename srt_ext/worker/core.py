"""The worker room's state machine, free of sockets so it can be tested directly.

``WorkerCore.handle(msg)`` applies one request (open/chunk/abort/generate/stats/
ping) and returns the reply plus any events it caused; ``WorkerCore.step()`` runs
one scheduler step on the engine and returns the token/finished events. Errors
from a request become an ``ErrorReply`` for that request (the stream is left as it
was); an engine failure fails only the streams in that step. Neither ever raises
out, because one bad request must not take the loop (and every other stream) down.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from radix_stream import KVCapacityError, StreamKVCache
from scheduler.core import Scheduler
from scheduler.cost_model import CostModel
from scheduler.stream import (
    ChunkAfterFinal,
    DuplicateStream,
    SamplingParams,
    StreamError,
    UnknownStream,
)
from srt_ext import messages as m
from srt_ext.engines.reference.engine import ForwardItem, ReferenceEngine
from srt_ext.stats_schema import EngineStats
from srt_ext.worker.config import CoreConfig

log = logging.getLogger("stream2llm.worker")


@dataclass
class _Req:
    """What the worker remembers about a live request beyond the scheduler's Stream."""

    spec: m.SamplingSpec
    seed: int
    eos: tuple[int, ...]
    outputs: int = 0
    last: int | None = None
    final_t: float | None = None
    first_t: float | None = None
    cached_at_final: int = 0
    prompt_tokens: int = 0


def _status(exc: Exception) -> int:
    if isinstance(exc, UnknownStream):
        return 404
    if isinstance(exc, (ChunkAfterFinal, DuplicateStream)):
        return 409
    return 400


class WorkerCore:
    """Scheduler + KV manager + engine; see the module docstring."""

    def __init__(self, engine: ReferenceEngine, cfg: CoreConfig | None = None) -> None:
        cfg = cfg or CoreConfig()
        self.engine, self.cfg = engine, cfg
        host = cfg.host_capacity_tokens
        host = host if host is not None else 4 * engine.kv_capacity_tokens
        self.kv = StreamKVCache(
            engine.allocator, page_size=1, mover=engine.kv_mover(), host_capacity_tokens=host
        )
        cm = CostModel.load(cfg.cost_model or "cpu-reference")
        self.sched = Scheduler(
            self.kv, cfg.policy, cfg.preemption, cm,  # type: ignore[arg-type]
            token_budget=cfg.token_budget, max_batch=cfg.max_batch,
        )
        # one stream alone must always fit: its input, its outputs and one page of slack
        self.max_tokens = min(engine.max_context_len, self.kv.capacity - 1)
        self.reqs: dict[str, _Req] = {}
        self._last_now = 0.0
        # seconds inside engine.forward and inside whole steps (stats: what a simulator's
        # profile is checked against; eval/validate.py)
        self.forward_s = 0.0
        self.step_wall_s = 0.0
        # one JSON line per step (what ran, how long the forward and the whole step
        # took) when STREAM2LLM_STEP_LOG names a file: the step model's residuals
        # are read from it (eval/step_residuals.py)
        path = os.environ.get("STREAM2LLM_STEP_LOG")
        self._step_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def now(self) -> float:
        """Wall clock, never going backwards (the scheduler rejects time travel)."""
        self._last_now = max(self._last_now, time.time())
        return self._last_now

    # ---- requests --------------------------------------------------------------
    def handle(self, msg: Any) -> tuple[Any, list[Any]]:
        """Apply one request: (reply or None, events)."""
        try:
            if isinstance(msg, m.Ping):
                return m.Pong(msg.req_id, time.time()), []
            if isinstance(msg, m.StatsRequest):
                return m.StatsReply(msg.req_id, self.stats()), []
            if isinstance(msg, m.OpenStream):
                return self._open(msg.req_id, msg.rid, msg.mode, msg.sampling,
                                  msg.input_ids, msg.final)  # fmt: skip
            if isinstance(msg, m.Generate):
                return self._open(msg.req_id, msg.rid, "append", msg.sampling, msg.input_ids, True)
            if isinstance(msg, m.AddChunk):
                if msg.sampling is not None:
                    self._set_sampling(msg.rid, msg.sampling, msg.final)
                return self._chunk(msg.req_id, msg.rid, msg.input_ids, msg.final), []
            if isinstance(msg, m.FlushCache):
                flushed = self.kv.tree.evict_tokens(self.kv.tree.evictable_size())
                return m.StatsReply(msg.req_id, {"flushed_tokens": flushed, **self.stats()}), []
            if isinstance(msg, m.Abort):
                return self._abort(msg.req_id, msg.rid)
        except (StreamError, KVCapacityError, ValueError) as exc:
            rid = getattr(msg, "rid", None)
            return m.ErrorReply(msg.req_id, rid, _status(exc), str(exc)), []
        except Exception as exc:  # a bug: report it, keep serving the others
            log.exception("request %r failed", msg)
            return m.ErrorReply(msg.req_id, getattr(msg, "rid", None), 500, repr(exc)), []
        return None, []

    def _open(self, req_id: int, rid: str, mode: str, spec: m.SamplingSpec,
              ids: list[int] | None, final: bool) -> tuple[Any, list[Any]]:  # fmt: skip
        self.sched.open(rid, mode, self.now())  # type: ignore[arg-type]
        try:
            self._set_sampling(rid, spec, final)
            if ids is None and not final:
                return m.ChunkReply(req_id, rid, 0, 0, 0), []
            return self._chunk(req_id, rid, ids or [], final), []
        except Exception:  # the open is atomic: no half-open stream is left behind
            self.sched.abort(rid)
            self.reqs.pop(rid, None)
            raise

    def _check_spec(self, spec: m.SamplingSpec) -> None:
        if spec.max_new_tokens + 1 > self.max_tokens:
            raise StreamError(f"max_new_tokens {spec.max_new_tokens} exceeds the context "
                              f"length {self.max_tokens}")  # fmt: skip

    def _set_sampling(self, rid: str, spec: m.SamplingSpec, final: bool) -> None:
        """Sampling parameters arrive with the open, or with the final chunk (a
        frontend program only knows its gen's parameters when retrieval ends)."""
        s = self.sched.get(rid)
        if rid in self.reqs and not final:
            raise StreamError(f"{rid}: sampling_params may only come with the final chunk")
        self._check_spec(spec)
        eos = () if spec.ignore_eos else tuple(self.engine.eos_token_ids) + tuple(spec.stop_token_ids)
        s.sampling = SamplingParams(spec.max_new_tokens, eos or None)
        seed = spec.seed if spec.seed is not None else random.getrandbits(31)
        self.reqs[rid] = _Req(spec, seed, eos)

    def _chunk(self, req_id: int, rid: str, ids: list[int], final: bool) -> Any:
        s = self.sched.get(rid)
        r = self.reqs[rid]
        if not ids and not final:
            raise StreamError(f"{rid}: empty chunk")
        vocab = self.engine.vocab_size
        if any(t >= vocab for t in ids):
            raise StreamError(f"{rid}: token id out of range (vocab {vocab})")
        new_len = len(ids) + (len(s.input_ids) if s.mode == "append" else 0)
        if new_len + r.spec.max_new_tokens > self.max_tokens:
            raise StreamError(f"{rid}: {new_len} input + {r.spec.max_new_tokens} new tokens "
                              f"exceed the context length {self.max_tokens}")  # fmt: skip
        now = self.now()
        res = self.sched.add_chunk(rid, ids, final, now)  # also adopts cached prefix KV
        if final:
            r.final_t, r.cached_at_final, r.prompt_tokens = now, res.kept, len(s.input_ids)
        return m.ChunkReply(req_id, rid, len(s.input_ids), res.kept, res.invalidated, res.deferred)

    def _abort(self, req_id: int, rid: str) -> tuple[Any, list[Any]]:
        s = self.sched.get(rid)
        reply = m.ChunkReply(req_id, rid, len(s.input_ids), 0, s.computed)
        events = [self._event(e) for e in self.sched.abort(rid)]
        return reply, [e for e in events if e is not None]

    # ---- the step ----------------------------------------------------------------
    def has_work(self) -> bool:
        return self.sched.has_work()

    def step(self) -> tuple[int, list[Any]]:
        """One scheduler step: (tokens computed, events)."""
        t0 = time.perf_counter()
        fwd0 = self.forward_s
        self._logged: list[list[int]] = []
        try:
            return self._step()
        finally:
            wall = time.perf_counter() - t0
            self.step_wall_s += wall
            if self._step_log is not None and self._logged:
                self._step_log.write(json.dumps({
                    "t": time.time(), "wall_s": wall, "forward_s": self.forward_s - fwd0,
                    "items": self._logged}) + "\n")  # fmt: skip

    def _step(self) -> tuple[int, list[Any]]:
        try:
            plan = self.sched.schedule(self.now())
        except Exception as exc:  # accounting bug: fail everything live, keep serving
            log.exception("schedule failed")
            return 0, self._fail_all(f"scheduler error: {exc!r}")
        if not plan.items:
            return 0, []
        items = []
        for it in plan.items:
            r = self.reqs[it.rid]
            items.append(ForwardItem(
                it.rid, it.token_ids, it.start, self.kv.slots(it.rid)[: it.start], it.new_slots,
                it.sample, r.spec.temperature, r.seed, r.spec.top_p, r.spec.top_k,
            ))  # fmt: skip
        if self._step_log is not None:
            self._logged = [[it.start, len(it.token_ids), int(it.sample)] for it in plan.items]
        t0 = time.perf_counter()
        try:
            out = self.engine.forward(items)
        except Exception as exc:  # fail the streams of this step, commit nothing sampled
            log.exception("engine step failed")
            for it in plan.items:
                self.sched.abort(it.rid)
            self.sched.finish_step(plan, {}, self.now())
            errs: list[Any] = []
            for it in plan.items:
                self.reqs.pop(it.rid, None)
                errs.append(m.StreamError(it.rid, 500, f"engine error: {exc!r}", time.time()))
            return plan.total_tokens, errs
        self.forward_s += time.perf_counter() - t0
        # forward() gives a token for every sampling item and None for the others
        sampled = {
            it.rid: int(t) for it, t in zip(plan.items, out, strict=True) if it.sample and t is not None
        }
        events = [self._event(e) for e in self.sched.finish_step(plan, sampled, self.now())]
        return plan.total_tokens, [e for e in events if e is not None]

    def _event(self, e: Any) -> Any:
        r = self.reqs.get(e.rid)
        if r is None:
            return None
        if e.kind in ("first_token", "token"):
            r.outputs += 1
            r.last = e.token
            if e.kind == "first_token":
                r.first_t = e.t
            return m.TokenEvent(e.rid, int(e.token), e.t, e.kind == "first_token")
        del self.reqs[e.rid]
        reason: m.FinishReason
        matched: int | None
        if e.kind == "aborted":
            reason, matched = "abort", None
        elif r.last is not None and r.last in r.eos:
            reason, matched = "stop", r.last
        else:
            reason, matched = "length", None
        return m.FinishedEvent(
            e.rid, e.t, reason, matched, r.prompt_tokens, r.outputs, r.cached_at_final,
            r.final_t, r.first_t,
        )  # fmt: skip

    def _fail_all(self, reason: str) -> list[Any]:
        errs: list[Any] = []
        for rid in list(self.sched.streams):
            try:
                self.sched.abort(rid)
            except Exception:  # noqa: BLE001  (best effort: we are already failing)
                log.exception("abort %s", rid)
            self.reqs.pop(rid, None)
            errs.append(m.StreamError(rid, 500, reason, time.time()))
        return errs

    # ---- introspection -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``/v1/stats`` (srt_ext/stats_schema.py: the keys SGLang's engine answers too)."""
        st = self.kv.stats()
        sc = self.sched.stats
        streams = list(self.sched.streams.values())
        waiting = sum(1 for s in streams if s.final and s.computed == 0 and not s.in_flight)
        return EngineStats(
            kv_capacity_tokens=st.capacity, kv_used_tokens=st.used, kv_free_tokens=st.free,
            kv_pinned_tokens=st.pinned + st.private, kv_evictable_tokens=st.evictable,
            kv_host_tokens=st.host, streams_open=self.sched.live(),
            streams_parked=sum(1 for s in streams if not s.final and s.pending == 0),
            requests_waiting=waiting,
            requests_running=sum(1 for s in streams if s.final) - waiting,
            tokens_invalidated=sc["tokens_invalidated"],
            preemptions_recompute=sc["recompute"], preemptions_swap=sc["swap"],
            swap_out_tokens=sc["swap_out_tokens"], swap_in_tokens=sc["swap_in_tokens"],
            steps=sc["steps"], engine_forward_s=round(self.forward_s, 6),
            engine_step_s=round(self.step_wall_s, 6), max_context_tokens=self.max_tokens,
        ).as_dict()  # fmt: skip
