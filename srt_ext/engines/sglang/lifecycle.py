"""Where a stream's entry in the table ends, and what SGLang must not do to it.

SGLang ends a request in three places, none of which knows our table: the output
streamer (a finished request's last output, also used for rejections), the abort
path (``Scheduler.abort_request``, which only looks at SGLang's own queues), and
``send_abort_output``. Hooks on those drop the entry, so the table holds live
streams only. Parked streams are out of SGLang's queues, so an ``abort_all`` (or
an abort by rid from ``/abort_request`` or a client disconnect) must reach them
here, and ``/flush_cache`` must not reset a tree whose nodes they pin.
"""

from __future__ import annotations

import logging
from typing import Any

from srt_ext.engines.sglang.state import table

logger = logging.getLogger(__name__)


def stream_output_around(original: Any, streamer: Any, reqs: list, *a: Any, **k: Any) -> Any:
    """AROUND ``SchedulerOutputStreamer.stream_output``: partial streams of the
    step have no output (SGLang skips only its one chunked request), and a
    finished stream's entry ends here."""
    t = table()
    if t.unsampled:
        reqs = [r for r in reqs if r.rid not in t.unsampled]
    result = original(streamer, reqs, *a, **k)
    if t.streams:
        for req in reqs:
            if req.finished() and req.rid in t.streams:
                t.forget(req.rid)
    return result


def send_abort_output_after(result: Any, scheduler: Any, abort_req: Any, req: Any,
                            *a: Any, **k: Any) -> Any:  # fmt: skip
    """AFTER ``Scheduler.send_abort_output``: the request ended outside the stream."""
    info = table().forget(req.rid)
    if info is not None and info.pin is not None:
        from srt_ext.engines.sglang import kv

        kv.unpin(scheduler.tree_cache, info)
    return result


def abort_request_after(result: Any, scheduler: Any, recv_req: Any, *a: Any, **k: Any) -> Any:
    """AFTER ``Scheduler.abort_request``: abort parked streams it matches (SGLang
    matches rids by prefix, and ``abort_all`` matches everything)."""
    from srt_ext.engines.sglang.messages import release_parked

    t = table()
    hit = lambda rid: recv_req.abort_all or (recv_req.rid and rid.startswith(recv_req.rid))  # noqa: E731
    for rid in list(t.parked):
        if hit(rid):
            release_parked(scheduler, rid, "aborted")
    for rid in t.unsampled:  # in a forward: released once its step settles
        info = t.streams.get(rid)
        if info is not None and hit(rid):
            info.aborted = True
    return result


def flush_cache_around(original: Any, scheduler: Any, *a: Any, **k: Any) -> Any:
    """AROUND ``Scheduler.flush_cache``: parked streams pin tree nodes that a
    reset would free under them, so they count as pending requests."""
    parked = len(table().parked)
    if parked:
        logger.warning("Cache not flushed: %d parked stream(s) hold KV", parked)
        return False
    return original(scheduler, *a, **k)
