"""The tokenizer-manager side of streams: what ``/v1/streams`` routes call.

Runs in SGLang's HTTP process next to its ``TokenizerManager`` (TM) and uses the
TM's own machinery, so a stream is an ordinary SGLang request to everything but
the scheduler hooks: ``_init_req_state`` registers the request's ``ReqState``,
``_tokenize_one_request`` validates it and builds SGLang's ``SamplingParams``,
and its results arrive through SGLang's detokenizer into that ``ReqState``
(``_wait_one_response``). What differs is the message: the first chunk goes to
the scheduler as a ``StreamOpenReq`` wrapping the tokenized request, later
chunks as ``StreamChunkReq``, each over the TM's own ZMQ socket to the
scheduler; the scheduler answers each with a ``StreamChunkOutput`` that the
TM's result dispatcher hands to ``on_output``. (Over ~300 lines on purpose: every
function here patches into one SGLang class, and the file is read against it.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from srt_ext.api.req_state import WorkerError
from srt_ext.engines.sglang.http_policy import (
    IDLE_ENV,
    HttpPolicy,
    check_input,
    install_policy,
)
from srt_ext.engines.sglang.messages import (
    StreamAbortReq,
    StreamChunkOutput,
    StreamChunkReq,
    StreamOpenReq,
    StreamStatsOutput,
    StreamStatsReq,
)
from srt_ext.stats_schema import EngineStats
from stream2llm.lcp import common_prefix_len

KEEP_RESULTS = 10_000  # finished streams whose result stays readable (as the reference)
# The scheduler answers between forward passes, and one pass of SGLang's chunked
# prefill on a CPU can take a minute under load; a chunk not acknowledged by then
# aborts its stream (``chunk``), since the scheduler may still apply it later.
REPLY_TIMEOUT_S = float(os.environ.get("STREAM2LLM_REPLY_TIMEOUT_S", "300"))
READER_POLL_S = 0.5  # how often a waiting result reader is checked for having left
logger = logging.getLogger(__name__)


class StreamHTTPError(Exception):
    """A refused call: HTTP ``status`` with a reason, nothing changed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class HFEncoder:
    """``encode(text, first)`` over a Hugging Face tokenizer: special tokens (BOS,
    or a WordPiece model's [CLS] ... [SEP]) only for text that starts the input."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer

    def encode(self, text: str, first: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=first)) if text or first else []


@dataclass
class TextTail:
    """The input's text since its last token-id chunk, and that text's ids.

    An append of text re-tokenizes the tail with the new text, so the input's ids
    are always those of the whole text however it was split: where the boundary
    changed the last tokens (a word cut in two, a space that joins the next
    token), the scheduler cuts them as an LCP cut and appends the new ones."""

    start: int = 0  # index of the tail's first token in the input
    first: bool = True  # the tail starts the input (the BOS rule)
    text: str = ""
    ids: list[int] = field(default_factory=list)


@dataclass(eq=False)
class HttpStream:
    """One stream as the HTTP side sees it."""

    rid: str
    mode: str
    sampling: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    readers: int = 0
    sent: bool = False  # the scheduler has the request (its first input went out)
    final: bool = False
    final_t: float | None = None
    input_tokens: int = 0
    tail: TextTail = field(default_factory=TextTail)
    first_token_t: float | None = None
    done_t: float | None = None
    out: dict[str, Any] | None = None  # latest cumulative output from SGLang
    error: StreamHTTPError | None = None
    done: bool = False
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    collector: asyncio.Task | None = None
    client: str = ""  # who opened it (limits.client_key): --max-streams-per-client

    def bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class StreamFrontend:
    """Stream calls on top of one ``TokenizerManager``."""

    def __init__(self, tm: Any, tokenizer: Any = None, encoder: Any = None) -> None:
        self.tm = tm
        self._tok = tokenizer
        self._encoder = encoder
        self.streams: dict[str, HttpStream] = {}
        self.finished: OrderedDict[str, HttpStream] = OrderedDict()
        self.waiters: dict[str, asyncio.Future] = {}
        self.idle_timeout = float(os.environ.get(IDLE_ENV, "300") or 0)
        self.policy = HttpPolicy.from_env()  # serve's API-room options (http_policy.py)
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # fire-and-forget aborts, kept referenced

    # ---- replies from the scheduler ---------------------------------------------
    def on_output(self, out: StreamChunkOutput | StreamStatsOutput) -> None:
        fut = self.waiters.pop(out.rid or "", None)
        if fut is not None and not fut.done():
            fut.set_result(out)

    async def call(self, msg: Any) -> Any:
        """Send ``msg`` to the scheduler and wait for its reply (same rid)."""
        if isinstance(msg, StreamChunkReq):
            self._check_chunk_input(msg)
        self.tm.auto_create_handle_loop()
        fut = asyncio.get_running_loop().create_future()
        self.waiters[msg.rid] = fut
        try:
            self.tm._dispatch_to_scheduler(msg)
            return await asyncio.wait_for(fut, REPLY_TIMEOUT_S)
        except TimeoutError:
            raise StreamHTTPError(504, "the scheduler did not answer") from None
        finally:
            self.waiters.pop(msg.rid, None)

    def _check_chunk_input(self, msg: StreamChunkReq) -> None:
        """``--max-input-tokens`` on a later chunk: the stream's whole input after it
        (its first input went through the tokenizer manager's own check)."""
        st = self.streams.get(msg.rid or "")
        if st is None or self.policy.limits.max_input_tokens is None:
            return
        n = len(msg.input_ids or ())
        if st.mode == "append":
            n += st.input_tokens if msg.keep is None else msg.keep
        check_input(self.policy.limits, n, lambda why: StreamHTTPError(400, why))

    def _check_streams(self, client: str) -> None:
        """``--max-streams-per-client``: 429 for one stream too many of ``client``."""
        if not client:
            return
        try:
            self.policy.limits.check_streams(self.streams.values(), client)
        except WorkerError as exc:
            raise StreamHTTPError(exc.status, exc.reason) from None

    # ---- tokens ---------------------------------------------------------------------
    @property
    def encoder(self) -> Any:
        """Text -> ids as SGLang's own ``/generate`` tokenizes it (the TM's HF
        tokenizer, special tokens for a text that starts the input), so a streamed
        text and a one-shot request of the same text get the same ids."""
        if self._encoder is None:
            self._encoder = HFEncoder(self.tm.tokenizer)
        return self._encoder

    @property
    def tok(self) -> Any:
        if self._tok is None:
            from sglang.srt.runtime_context import get_serving

            from srt_ext.api.tokenizer import TokenizerRoom

            self._tok = TokenizerRoom(get_serving().tokenizer_path)
        return self._tok

    def ids(self, text: str | None, ids: list[int] | None, first: bool) -> list[int]:
        if ids is not None:
            if any(t >= self.tok.vocab_size for t in ids):
                raise StreamHTTPError(400, f"token id out of range (vocab size {self.tok.vocab_size})")
            return list(ids)
        return self.encoder.encode(text or "", first=first)

    def append_ids(self, st: HttpStream, text: str | None,
                   ids: list[int] | None) -> tuple[list[int], int | None, TextTail]:  # fmt: skip
        """(ids to append, tokens of the input to keep first or None for all, the
        text tail after this chunk) for an append-mode chunk; the caller commits
        the tail once the scheduler took the chunk."""
        if ids is not None:
            ids = self.ids(None, ids, first=False)
            return ids, None, TextTail(start=st.input_tokens + len(ids), first=False)
        tail = st.tail
        full = self.encoder.encode(tail.text + (text or ""), first=tail.first)
        lcp = common_prefix_len(tail.ids, full)
        keep = tail.start + lcp
        new_tail = TextTail(tail.start, tail.first, tail.text + (text or ""), full)
        return full[lcp:], (None if keep == st.input_tokens else keep), new_tail

    def get(self, rid: str) -> HttpStream:
        st = self.streams.get(rid) or self.finished.get(rid)
        if st is None:
            raise StreamHTTPError(404, f"unknown stream {rid}")
        return st

    # ---- stream calls ----------------------------------------------------------------
    async def open(self, rid: str | None, mode: str, sampling: dict[str, Any],
                   ids: list[int] | None, final: bool,
                   text: str | None = None, client: str = "") -> StreamChunkOutput:  # fmt: skip
        rid = rid or uuid.uuid4().hex
        if rid in self.streams or rid in self.finished or rid in self.tm.rid_to_state:
            raise StreamHTTPError(409, f"stream {rid} already exists")
        if ids is not None and not ids:
            raise StreamHTTPError(400, "empty first chunk (omit text/input_ids to open without input)")
        if final and not ids:
            raise StreamHTTPError(400, "empty input")
        self._check_streams(client)
        self.ensure_reaper()
        st = self.streams[rid] = HttpStream(rid, mode, sampling, client=client)
        if ids:
            st.tail = (TextTail(0, True, text, list(ids)) if text is not None
                       else TextTail(start=len(ids), first=False))  # fmt: skip
        if final:
            st.final, st.final_t = True, st.created
        if not ids:  # opened without input: the scheduler hears of it with the first chunk
            return StreamChunkOutput(rid=rid)
        try:
            return await self._start(st, ids, final)
        except BaseException:
            self.streams.pop(rid, None)
            raise

    async def _start(self, st: HttpStream, ids: list[int], final: bool) -> StreamChunkOutput:
        """First input: an SGLang request (ReqState, tokenized object) sent as a stream."""
        from sglang.srt.managers.io_struct import GenerateReqInput

        tm = self.tm
        tm.auto_create_handle_loop()
        obj = GenerateReqInput(input_ids=ids, sampling_params=dict(st.sampling), rid=st.rid,
                               stream=True)  # fmt: skip
        obj.normalize_batch_and_arguments()
        tm._init_req_state(obj, None)
        try:
            tokenized = await tm._tokenize_one_request(obj)
        except ValueError as exc:  # SGLang's own validation (length, sampling params)
            tm.rid_to_state.pop(st.rid, None)
            raise StreamHTTPError(400, str(exc)) from None
        tokenized.wrap_pickle_fields()
        st.collector = asyncio.create_task(self._collect(st, obj))
        try:
            reply = await self.call(StreamOpenReq(rid=st.rid, mode=st.mode, final=final,
                                                  generate=tokenized))  # fmt: skip
        except BaseException as exc:
            tm.rid_to_state.pop(st.rid, None)
            st.collector.cancel()
            if isinstance(exc, StreamHTTPError) and exc.status == 504:
                self._abandon(st)  # the open may still be applied: end it behind
            raise
        if reply.error is not None:
            tm.rid_to_state.pop(st.rid, None)
            st.collector.cancel()
            raise StreamHTTPError(reply.status, reply.error)
        tm._mark_state_dispatched(st.rid)
        st.sent, st.input_tokens = True, reply.input_tokens
        return reply

    async def chunk(self, rid: str, text: str | None, ids: list[int] | None, final: bool,
                    mode: str | None, sampling: dict[str, Any] | None) -> StreamChunkOutput:  # fmt: skip
        """Apply one chunk; chunks of a stream are serialized in arrival order."""
        st = self.get(rid)
        st.last_active = time.monotonic()
        async with st.lock:
            if st.final or st.done:
                raise StreamHTTPError(409, f"stream {rid} already received its final chunk")
            if mode is not None and mode != st.mode:
                raise StreamHTTPError(409, f"stream {rid} is in {st.mode} mode; this chunk says {mode}")
            keep, tail = None, None
            if st.mode == "append":
                new, keep, tail = self.append_ids(st, text, ids)
            else:
                new = self.ids(text, ids, first=True)
            if not new and keep is None and (not final or st.mode == "update" or not st.sent):
                raise StreamHTTPError(400, "empty chunk")
            if sampling is not None and not final:
                raise StreamHTTPError(400, "sampling_params may only come with the final chunk")
            if not st.sent:
                if sampling is not None:
                    st.sampling = sampling
                reply = await self._start(st, new, final)
            else:
                sp = self._sampling_params(sampling) if sampling is not None else None
                msg = StreamChunkReq(rid=rid, input_ids=new, final=final, keep=keep,
                                     sampling_params=sp)  # fmt: skip
                try:
                    reply = await self.call(msg)
                except StreamHTTPError as exc:
                    if exc.status == 504:
                        self._abandon(st)
                        raise StreamHTTPError(504, f"the scheduler did not acknowledge the chunk "
                                              f"in {REPLY_TIMEOUT_S:g} s; stream {rid} was aborted "
                                              "(the chunk may still have been applied)") from None
                    raise
                if reply.error is not None:
                    raise StreamHTTPError(reply.status, reply.error)
            st.input_tokens = reply.input_tokens
            if tail is not None:
                st.tail = tail
            if final:
                st.final, st.final_t = True, time.monotonic()
            return reply

    def _abandon(self, st: HttpStream) -> None:
        """End a stream whose chunk went unacknowledged: the scheduler may apply that
        chunk later, so this side no longer knows the stream's input. The abort goes
        after the chunk on the same queue, so the scheduler applies it after the chunk
        and releases the stream; its reader gets SGLang's abort."""
        self.streams.pop(st.rid, None)
        self.tm._dispatch_to_scheduler(StreamAbortReq(rid=st.rid))

    def _sampling_params(self, sampling: dict[str, Any]) -> Any:
        """SGLang's ``SamplingParams``, normalized and verified as the TM does."""
        sp = self.tm.sampling_params_class(**sampling)
        try:
            sp.normalize(self.tm.tokenizer)
            sp.verify(self.tm.model_config.vocab_size)
        except ValueError as exc:
            raise StreamHTTPError(400, str(exc)) from None
        return sp

    async def abort(self, rid: str) -> StreamChunkOutput:
        st = self.get(rid)
        self.streams.pop(rid, None)
        self.finished.pop(rid, None)
        if st.done or not st.sent:
            return StreamChunkOutput(rid=rid, input_tokens=st.input_tokens)
        reply = await self.call(StreamAbortReq(rid=rid))
        return reply  # the collector ends with SGLang's abort output

    # ---- idle streams -------------------------------------------------------------------
    def ensure_reaper(self) -> None:
        if self.idle_timeout > 0 and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_timeout / 2))
            await self.reap_idle(time.monotonic())

    async def reap_idle(self, now: float) -> list[str]:
        """Abort partial streams with no chunk and no result reader for
        ``idle_timeout`` s: an abandoned parked stream would pin its KV forever
        (the reference server reaps the same way; its result becomes 410)."""
        gone = [st for st in list(self.streams.values())
                if not st.final and not st.done and st.readers == 0 and not st.lock.locked()
                and now - st.last_active > self.idle_timeout]  # fmt: skip
        for st in gone:
            if st.sent:
                await self.call(StreamAbortReq(rid=st.rid))
            st.error = StreamHTTPError(410, f"stream {st.rid} aborted: idle for "
                                            f"{self.idle_timeout:.0f} s")  # fmt: skip
            st.done = True
            st.bump()
            self.streams.pop(st.rid, None)
            self.finished[st.rid] = st
        return [st.rid for st in gone]

    async def stats(self) -> dict[str, Any]:
        """``/v1/stats`` in the schema both engines answer (``srt_ext.stats_schema``):
        the scheduler's counters; SGLang's engine does not time its steps."""
        reply = await self.call(StreamStatsReq(rid=f"stats-{uuid.uuid4().hex}"))
        return EngineStats(**reply.stats, engine_forward_s=0.0, engine_step_s=0.0).as_dict()

    # ---- readers leaving (--reader-disconnect) ---------------------------------------------
    def reader_left(self, st: HttpStream) -> None:
        """A result reader went away before the end: with ``--reader-disconnect abort``
        the stream is aborted (in the background: the reader's task is ending)."""
        if self.policy.reader_disconnect != "abort" or st.done or st.rid not in self.streams:
            return
        task = asyncio.get_running_loop().create_task(self._abort_quietly(st))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _abort_quietly(self, st: HttpStream) -> None:
        """Abort under the stream's lock: a chunk the client sends meanwhile is then
        either applied before the abort or refused after it (404), never interleaved
        with it (replies are matched by rid)."""
        try:
            async with st.lock:
                if st.rid in self.streams:
                    await self.abort(st.rid)
        except StreamHTTPError as exc:  # gone meanwhile, or the scheduler did not answer
            logger.info("stream %s: abort after its reader left: %s", st.rid, exc.reason)

    # ---- results ------------------------------------------------------------------------
    async def _collect(self, st: HttpStream, obj: Any) -> None:
        """Follow the request's SGLang ``ReqState`` until it finishes."""
        try:
            async for out in self.tm._wait_one_response(obj, None):
                if st.first_token_t is None and out.get("output_ids"):
                    st.first_token_t = time.monotonic()
                st.out = {"text": out.get("text") or "", "output_ids": list(out["output_ids"]),
                          "meta_info": dict(out["meta_info"])}  # fmt: skip
                reason = st.out["meta_info"].get("finish_reason") or {}
                if reason.get("type") == "abort" and reason.get("status_code"):
                    st.error = StreamHTTPError(int(reason["status_code"]),
                                               str(reason.get("message", "aborted")))  # fmt: skip
                st.bump()
        except Exception as exc:  # noqa: BLE001  (any SGLang error ends the stream)
            st.error = StreamHTTPError(getattr(exc, "status_code", 500), str(exc))
        finally:
            st.done, st.done_t = True, time.monotonic()
            st.bump()
            if self.streams.pop(st.rid, None) is not None:
                self.finished[st.rid] = st
                while len(self.finished) > KEEP_RESULTS:
                    self.finished.popitem(last=False)

    def result(self, st: HttpStream) -> dict[str, Any]:
        if st.error is not None:
            raise st.error
        out = st.out or {"text": "", "output_ids": [], "meta_info": {"id": st.rid}}
        meta = dict(out["meta_info"])
        meta["ttft_s"] = _delta(st.final_t, st.first_token_t)
        meta["ttft_from_open_s"] = _delta(st.created, st.first_token_t)
        meta["e2e_latency"] = _delta(st.created, st.done_t)
        return {"text": out["text"], "output_ids": out["output_ids"], "meta_info": meta}

    async def wait_done(self, st: HttpStream,
                        disconnected: Callable[[], Awaitable[bool]] | None = None) -> HttpStream:  # fmt: skip
        """Wait until ``st`` is done; with ``disconnected`` (``request.is_disconnected``)
        checked every ``READER_POLL_S``: a reader that left raises ``ReaderGone``."""
        st.readers += 1  # a waiting reader keeps the stream from being reaped
        try:
            while not st.done:
                changed = st.changed
                try:
                    await asyncio.wait_for(changed.wait(), READER_POLL_S if disconnected else None)
                except TimeoutError:
                    pass
                if not st.done and disconnected is not None and await disconnected():
                    raise ReaderGone(st.rid)
        finally:
            st.readers -= 1
            st.last_active = time.monotonic()
        return st


class ReaderGone(Exception):
    """The client of a plain result read disconnected before the result was ready."""


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, b - a)


def install(tm: Any) -> StreamFrontend:
    """Attach a frontend to ``tm``: reply handler, and the routes on SGLang's app
    when this process serves it (``launch_server`` imported ``http_server``)."""
    from sglang.utils import TypeBasedDispatcher

    from srt_ext.engines.sglang.messages import register_message_types

    register_message_types()
    fe = StreamFrontend(tm)
    tm.stream2llm_frontend = fe
    tm._result_dispatcher += TypeBasedDispatcher([
        (StreamChunkOutput, fe.on_output),
        (StreamStatsOutput, fe.on_output),
    ])
    http = sys.modules.get("sglang.srt.entrypoints.http_server")
    if http is not None:
        from srt_ext.engines.sglang.routes import add_stream_routes

        install_policy(http.app, tm, fe.policy)
        add_stream_routes(http.app)
    return fe


def tokenizer_dispatcher_after(result: Any, tm: Any, *a: Any, **k: Any) -> Any:
    """AFTER hook on ``TokenizerManager.init_request_dispatcher``."""
    install(tm)
    return result
