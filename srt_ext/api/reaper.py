"""Idle stream reaping: a stream nobody feeds or reads gives its KV back.

Why: a stream pins KV from its first chunk until it finishes. A client that
crashes, loses its connection or simply never sends ``final`` would otherwise
hold that memory forever and slowly starve every other client. A stream is
reaped when, for ``idle_timeout`` seconds, it received no chunk and no handler
was waiting on its result:

- ``idle``: not final yet (the client stopped sending chunks);
- ``unread``: final, still generating, and nobody reads the output.

Reaping aborts the stream in the worker (its KV is freed, not kept as cache),
ends it with a 410 error (a late ``GET /result`` says why) and counts it in
``/metrics`` (``stream2llm_reaped_total{reason}``). One-shot requests are never
reaped: their HTTP handler is always attached and their length is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from srt_ext import messages as m
from srt_ext.api.req_state import ReqState, WorkerError

log = logging.getLogger("stream2llm.server")


def idle_victims(states: Iterable[ReqState], now: float, idle_timeout: float) -> list[tuple[ReqState, str]]:
    """(state, reason) of every stream idle for longer than ``idle_timeout``."""
    out = []
    for st in states:
        if st.done or st.mode == "oneshot" or st.readers > 0 or st.lock.locked():
            continue
        if now - st.last_active > idle_timeout:
            out.append((st, "unread" if st.final else "idle"))
    return out


async def abort_stream(svc: Any, st: ReqState, reason: str, why: str) -> None:
    """Abort ``st`` in the worker, end it with a 410 ``why`` and count ``reason``."""
    # fail it first: the worker's "finished: abort" event that follows the reply is
    # then ignored, so readers see the 410 and its reason, not a bare abort
    svc.link.fail(st, WorkerError(410, why))
    try:
        await svc.link.request(m.Abort(svc.link.next_id(), st.rid), timeout=10.0)
    except WorkerError:
        pass  # it finished (404) or the worker is gone (503): nothing left to free
    svc.metrics.reaped.labels(reason).inc()
    log.warning("stream %s aborted (%s): %s", st.rid, reason, why)


async def reap_loop(svc: Any, idle_timeout: float, interval: float | None = None) -> None:
    """Run forever (a lifespan task): reap idle streams every ``interval`` seconds."""
    interval = interval or min(5.0, max(0.1, idle_timeout / 4))
    while True:
        await asyncio.sleep(interval)
        if svc.link.dead:
            continue
        for st, reason in idle_victims(list(svc.link.states.values()), time.monotonic(), idle_timeout):
            what = "no chunk" if reason == "idle" else "nobody read the result"
            try:
                await abort_stream(svc, st, reason, f"stream reaped: {what} for {idle_timeout:g} s")
            except Exception:  # noqa: BLE001  (the loop must survive anything)
                log.exception("reaping %s failed", st.rid)
