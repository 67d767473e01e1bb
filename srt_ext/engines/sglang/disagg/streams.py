"""Streams on SGLang's prefill/decode pair: prefilled (and parked, and cut at the
LCP) on the prefill server while chunks arrive, handed to the decode server at
the final chunk.

Scheduler side (prefill server, ``--disaggregation-mode prefill``), hooks on
SGLang's PD prefill mixin and scheduler:

* AROUND ``Scheduler._add_request_to_queue``: a stream goes to the waiting queue
  as on a co-located server, without a KV sender (it has no decode peer yet).
* AROUND ``get_next_disagg_prefill_batch_to_run`` (the PD prefill loop's step;
  ``steps.next_batch_around`` hooks the co-located one): partial rows are parked
  (``steps.settle``), idle streams give way (``pressure.make_room``), and a stream
  whose final chunk arrived leaves the waiting queue for SGLang's bootstrap queue,
  with its bootstrap fields (this server's bootstrap server, ``room_of(rid)``).
  There the decode server's receiver finds it; once bootstrapped it is admitted
  as an ordinary request, matches its pinned prefix, prefills what is left,
  samples the first token, and SGLang's sender ships every page of its KV.
* AROUND ``resolve_waiting_queue_bootstrap`` and ``maybe_send_cached_prefix_chunk``:
  partial streams (no sender) are left out of the sender poll and of the early
  send of a cached prefix.

HTTP side (the prefill server's process, where ``/v1/streams`` runs), hooks on
our ``StreamFrontend``:

* AROUND ``call``: mirrors every stream's whole input ids (open / chunk
  messages, the scheduler's own ``_next_version`` rule).
* AROUND ``open`` / ``chunk``: after the final chunk is acknowledged, the decode
  request (the input ids, the sampling parameters, bootstrap host/port/room) is
  POSTed to the decode server's ``/generate`` (``stream: true``), exactly what
  SGLang's router sends a decode server in PD mode.
* AROUND ``abort``: a stream aborted while it decodes leaves the decode
  request's HTTP stream (SGLang aborts it on the decode server).
* AROUND ``_collect`` (in place of the original on a PD prefill server): the stream's result is the decode server's output; the
  prefill side's own request (which ends once its KV is sent, with one token)
  only reports failures. A decode server that fails or cannot be reached ends
  the stream with 502 and a JSON reason, and the prefill request is aborted (its
  KV released).

The rid -> room map is a hash both sides compute, so no message of ours
changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from array import array
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

DECODE_URL_ENV = "STREAM2LLM_PD_DECODE_URL"
BOOTSTRAP_PORT_ENV = "STREAM2LLM_PD_BOOTSTRAP_PORT"
BOOTSTRAP_HOST_ENV = "STREAM2LLM_PD_BOOTSTRAP_HOST"
DECODE_TIMEOUT_ENV = "STREAM2LLM_PD_DECODE_TIMEOUT_S"

SCHED = "sglang.srt.managers.scheduler.Scheduler"
PREFILL_MIXIN = "sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin"
FRONTEND = "srt_ext.engines.sglang.frontend.StreamFrontend"


def room_of(rid: str) -> int:
    """The bootstrap room of a stream: 63 bits of a hash of its rid."""
    return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "big") >> 1


# ---- scheduler side -----------------------------------------------------------------
def _is_prefill(scheduler: Any) -> bool:
    from sglang.srt.disaggregation.utils import DisaggregationMode

    return getattr(scheduler, "disaggregation_mode", None) == DisaggregationMode.PREFILL


def _set_bootstrap(scheduler: Any, req: Any) -> None:
    if req.bootstrap_host is None:
        sa = scheduler.server_args
        req.bootstrap_host = os.environ.get(BOOTSTRAP_HOST_ENV) or sa.host
        req.bootstrap_port = sa.disaggregation_bootstrap_port
        req.bootstrap_room = room_of(req.rid)


def add_request_around(original: Callable, scheduler: Any, req: Any, *a: Any, **k: Any) -> Any:
    """AROUND ``Scheduler._add_request_to_queue`` on a PD prefill server: a stream
    joins the waiting queue without a sender, as on a co-located server (final at
    its open or not: ``_send_final_streams`` hands it to SGLang's bootstrap queue)."""
    from srt_ext.engines.sglang.state import table

    if not _is_prefill(scheduler):
        return original(scheduler, req, *a, **k)
    info = table().streams.get(req.rid)
    if info is None or not info.is_stream or req.disagg_kv_sender is not None:
        return original(scheduler, req, *a, **k)
    scheduler.waiting_queue.append(req)
    req.time_stats.set_wait_queue_entry_time()
    return None


def _send_final_streams(scheduler: Any) -> None:
    """Final streams still in the waiting queue without a sender -> SGLang's
    bootstrap queue, with this server's bootstrap address and ``room_of(rid)``
    (the room the HTTP side gave the decode request)."""
    from srt_ext.engines.sglang.state import table

    t = table()
    moving = [r for r in scheduler.waiting_queue
              if getattr(r, "disagg_kv_sender", None) is None
              and (info := t.streams.get(r.rid)) is not None and info.final
              and not info.parked]  # fmt: skip
    if not moving:
        return
    scheduler.waiting_queue = [r for r in scheduler.waiting_queue if r not in moving]
    from srt_ext.engines.sglang import kv

    for req in moving:
        # the pin ends here: SGLang's bootstrap-queue paths (abort, a failed
        # bootstrap) know nothing of it. Until admission the prefix is evictable
        # (recomputed if pressure took it: still exact)
        kv.unpin(scheduler.tree_cache, t.streams[req.rid])
        _set_bootstrap(scheduler, req)
        scheduler.disagg_prefill_bootstrap_queue.add(
            req, scheduler.model_config.num_key_value_heads
        )
        req.time_stats.set_prefill_bootstrap_queue_entry_time()


def next_prefill_batch_around(original: Callable, scheduler: Any, running_batch: Any,
                              last_batch: Any, *a: Any, **k: Any) -> Any:  # fmt: skip
    """AROUND ``get_next_disagg_prefill_batch_to_run``: the co-located step's stream
    work (``steps``), then final streams go to SGLang's bootstrap queue."""
    from srt_ext.engines.sglang import pressure, steps
    from srt_ext.engines.sglang.state import table

    t = table()
    if t.streams or t.unsampled:
        steps.hold_back(t, last_batch)
        steps.settle(scheduler, t)
        pressure.make_room(scheduler, t, running_batch)
        t.holds_off = steps.holds_lifted(scheduler, t, running_batch)
        _send_final_streams(scheduler)
    return original(scheduler, running_batch, last_batch, *a, **k)


def resolve_bootstrap_around(original: Callable, scheduler: Any, *a: Any, **k: Any) -> Any:
    """AROUND ``resolve_waiting_queue_bootstrap``: poll only requests with a sender."""
    queue = scheduler.waiting_queue
    bare = [r for r in queue if getattr(r, "disagg_kv_sender", None) is None]
    if not bare:
        return original(scheduler, *a, **k)
    scheduler.waiting_queue = [r for r in queue if getattr(r, "disagg_kv_sender", None) is not None]
    try:
        return original(scheduler, *a, **k)
    finally:
        kept = set(map(id, scheduler.waiting_queue))
        scheduler.waiting_queue = [r for r in queue if id(r) in kept or r in bare]


def early_send_around(original: Callable, scheduler: Any, req: Any, *a: Any, **k: Any) -> Any:
    """AROUND ``maybe_send_cached_prefix_chunk``: a partial stream has no sender."""
    if getattr(req, "disagg_kv_sender", None) is None:
        return None
    return original(scheduler, req, *a, **k)


# ---- HTTP side ----------------------------------------------------------------------
def decode_url() -> str | None:
    return os.environ.get(DECODE_URL_ENV) or None


def _bootstrap_host() -> str:
    return os.environ.get(BOOTSTRAP_HOST_ENV) or _server_host()


def _server_host() -> str:
    try:
        from sglang.srt.runtime_context import get_serving

        return str(get_serving().host)
    except Exception:  # noqa: BLE001
        return "127.0.0.1"


async def call_around(original: Callable, fe: Any, msg: Any, *a: Any, **k: Any) -> Any:
    """Mirror each stream's whole input ids from the messages the scheduler took."""
    from srt_ext.engines.sglang.messages import StreamChunkReq, StreamOpenReq, _next_version

    if decode_url() is not None and isinstance(msg, StreamOpenReq):
        # SGLang's PD scheduler refuses a request without a room; the host stays
        # unset until the final chunk (add_request_around)
        msg.generate.bootstrap_room = room_of(msg.generate.rid or msg.rid)
    reply = await original(fe, msg, *a, **k)
    if decode_url() is None or getattr(reply, "error", None) is not None:
        return reply
    st = fe.streams.get(getattr(msg, "rid", None) or "")
    if st is None:
        return reply
    if isinstance(msg, StreamOpenReq):
        st.pd_ids = array("q", msg.generate.input_ids)
    elif isinstance(msg, StreamChunkReq):
        base = getattr(st, "pd_ids", array("q"))
        st.pd_ids = _next_version(st.mode, base, array("q", msg.input_ids), msg.keep)
    return reply


def _start_decode(fe: Any, st: Any, sampling: dict[str, Any] | None) -> None:
    if getattr(st, "pd_task", None) is not None:
        return
    params = dict(sampling if sampling is not None else st.sampling)
    port = int(os.environ.get(BOOTSTRAP_PORT_ENV, "8998"))
    body = {"input_ids": list(st.pd_ids), "sampling_params": params, "stream": True,
            "bootstrap_host": _bootstrap_host(), "bootstrap_port": port,
            "bootstrap_room": room_of(st.rid), "rid": f"{st.rid}-decode"}  # fmt: skip
    st.pd_events = asyncio.Queue()
    st.pd_task = asyncio.create_task(_run_decode(st, body))
    _started(st).set()


async def _run_decode(st: Any, body: dict[str, Any]) -> None:
    """POST the decode request and queue its events (dicts), then None; an error
    is queued as an exception."""
    import httpx

    url = decode_url()
    timeout = float(os.environ.get(DECODE_TIMEOUT_ENV, "600"))
    q: asyncio.Queue = st.pd_events
    headers = {}
    if os.environ.get("STREAM2LLM_PD_DECODE_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['STREAM2LLM_PD_DECODE_API_KEY']}"
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0)) as client:
            async with client.stream("POST", f"{url}/generate", json=body, headers=headers) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")[:500]
                    raise RuntimeError(f"decode server {url} answered {r.status_code}: {text}")
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    await q.put(json.loads(data))
        await q.put(None)
    except Exception as exc:  # noqa: BLE001
        await q.put(
            RuntimeError(
                f"decode server {url} failed: {type(exc).__name__}: {exc}"
                if not isinstance(exc, RuntimeError)
                else str(exc)
            )
        )


async def open_around(original: Callable, fe: Any, rid: Any, mode: str, sampling: Any,
                      ids: Any, final: bool, *a: Any, **k: Any) -> Any:  # fmt: skip
    reply = await original(fe, rid, mode, sampling, ids, final, *a, **k)
    if decode_url() is not None and final:
        st = fe.streams.get(reply.rid)
        if st is not None and hasattr(st, "pd_ids"):
            _start_decode(fe, st, sampling)
    return reply


async def chunk_around(original: Callable, fe: Any, rid: str, text: Any, ids: Any, final: bool,
                       mode: Any, sampling: Any, *a: Any, **k: Any) -> Any:  # fmt: skip
    reply = await original(fe, rid, text, ids, final, mode, sampling, *a, **k)
    if decode_url() is not None and final:
        st = fe.streams.get(rid)
        if st is not None and hasattr(st, "pd_ids"):
            _start_decode(fe, st, sampling)
    return reply


async def abort_around(original: Callable, fe: Any, rid: str, *a: Any, **k: Any) -> Any:
    """A client abort after the final chunk reaches the decode server too: leaving
    the decode request's HTTP stream makes SGLang abort it there."""
    st = fe.streams.get(rid)
    reply = await original(fe, rid, *a, **k)
    task = getattr(st, "pd_task", None)
    if task is not None and not task.done():
        st.pd_aborted = True
        task.cancel()
        st.pd_events.put_nowait(RuntimeError(f"stream {rid} was aborted"))
    return reply


def _started(st: Any) -> asyncio.Event:
    """Set once the stream's decode request is under way."""
    ev = getattr(st, "pd_started", None)
    if ev is None:
        ev = st.pd_started = asyncio.Event()
    return ev


async def _wait_task(st: Any) -> None:
    await _started(st).wait()


async def collect_pd(fe: Any, st: Any, obj: Any) -> None:
    """``StreamFrontend._collect`` on a PD prefill server (REPLACE; co-located: the
    original). The prefill request's own output reports only a failure; the result
    is the decode server's."""
    from srt_ext.engines.sglang.frontend import KEEP_RESULTS, StreamHTTPError

    if decode_url() is None:
        return await _original_collect(fe, st, obj)
    prefill_error: StreamHTTPError | None = None

    async def follow_prefill() -> None:
        nonlocal prefill_error
        try:
            async for out in fe.tm._wait_one_response(obj, None):
                reason = (out.get("meta_info") or {}).get("finish_reason") or {}
                if reason.get("type") == "abort":
                    prefill_error = StreamHTTPError(int(reason.get("status_code") or 500),
                                                    str(reason.get("message", "aborted")))  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            prefill_error = StreamHTTPError(getattr(exc, "status_code", 500), str(exc))
        task = getattr(st, "pd_task", None)
        if prefill_error is not None and task is not None and not task.done():
            # aborted on the prefill side (client abort, a failed bootstrap): leaving
            # the decode request's HTTP stream makes SGLang abort it there too
            task.cancel()
            st.pd_events.put_nowait(RuntimeError("the prefill request ended"))

    prefill = asyncio.create_task(follow_prefill())
    try:
        waiter = asyncio.create_task(_wait_task(st))
        await asyncio.wait({prefill, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the prefill request ended before any final chunk
            waiter.cancel()
            st.error = prefill_error or StreamHTTPError(500, "the prefill request ended")
            return
        q: asyncio.Queue = st.pd_events
        while True:
            ev = await q.get()
            if ev is None:
                break
            if isinstance(ev, Exception):
                if getattr(st, "pd_aborted", False):
                    st.error = StreamHTTPError(410, str(ev))
                    return
                if prefill_error is not None:  # the prefill side ended it
                    st.error = prefill_error
                    return
                await prefill_abort(fe, st)
                await asyncio.wait({prefill}, timeout=5)
                st.error = StreamHTTPError(502, str(ev))
                return
            if st.first_token_t is None and ev.get("output_ids"):
                st.first_token_t = time.monotonic()
            st.out = {"text": ev.get("text") or "", "output_ids": list(ev.get("output_ids") or []),
                      "meta_info": dict(ev.get("meta_info") or {})}  # fmt: skip
            reason = st.out["meta_info"].get("finish_reason") or {}
            if reason.get("type") == "abort":
                st.error = StreamHTTPError(int(reason.get("status_code") or 500),
                                           str(reason.get("message", "aborted")))  # fmt: skip
            st.bump()
        await asyncio.wait({prefill}, timeout=30)
        if st.error is None and prefill_error is not None and st.out is None:
            st.error = prefill_error
    except Exception as exc:  # noqa: BLE001
        st.error = StreamHTTPError(500, str(exc))
    finally:
        if not prefill.done():
            prefill.cancel()
        st.done, st.done_t = True, time.monotonic()
        st.bump()
        if fe.streams.pop(st.rid, None) is not None:
            fe.finished[st.rid] = st
            while len(fe.finished) > KEEP_RESULTS:
                fe.finished.popitem(last=False)


async def prefill_abort(fe: Any, st: Any) -> None:
    """End the prefill side's request of a stream whose decode failed (its KV and
    its bootstrap-queue slot are released by SGLang's abort path)."""
    try:
        fe.tm.abort_request(rid=st.rid)
    except Exception:  # noqa: BLE001
        logger.exception("stream %s: abort of the prefill request failed", st.rid)


_ORIGINAL_COLLECT: Callable | None = None


async def _original_collect(fe: Any, st: Any, obj: Any) -> None:
    assert _ORIGINAL_COLLECT is not None
    await _ORIGINAL_COLLECT(fe, st, obj)


def hooks() -> list[tuple[str, Callable, str]]:
    return [
        (f"{SCHED}._add_request_to_queue", add_request_around, "AROUND"),
        (f"{PREFILL_MIXIN}.get_next_disagg_prefill_batch_to_run", next_prefill_batch_around,
         "AROUND"),
        (f"{PREFILL_MIXIN}.resolve_waiting_queue_bootstrap", resolve_bootstrap_around, "AROUND"),
        (f"{PREFILL_MIXIN}.maybe_send_cached_prefix_chunk", early_send_around, "AROUND"),
        (f"{FRONTEND}.call", call_around, "AROUND"),
        (f"{FRONTEND}.open", open_around, "AROUND"),
        (f"{FRONTEND}.chunk", chunk_around, "AROUND"),
        (f"{FRONTEND}._collect", collect_around, "AROUND"),
        (f"{FRONTEND}.abort", abort_around, "AROUND"),
    ]  # fmt: skip


async def collect_around(original: Callable, fe: Any, st: Any, obj: Any) -> None:
    global _ORIGINAL_COLLECT
    _ORIGINAL_COLLECT = original
    await collect_pd(fe, st, obj)
