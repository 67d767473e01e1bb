"""Graceful shutdown: on SIGTERM stop taking new work, let in-flight work finish
for up to ``grace`` seconds, abort the rest, stop the worker, exit 0.

Why not uvicorn's own shutdown: uvicorn closes the listening socket at once and
then cancels whatever is still running after its timeout, so a stream that is
half-way through its chunks would just see connection errors, and its client
could not tell "refused" from "lost". Here the listener stays open while
draining: new work (opening a stream, one-shot generation) gets a clear 503,
chunks and result reads of streams already open keep working, ``/health`` says
503 (so a load balancer stops routing here), and streams still open when the
grace period ends are aborted with a 410 that says why. Then uvicorn stops as
usual and the lifespan shuts the worker down. The process exits 0 (uvicorn
would re-raise the signal and die of it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import Any

import orjson
import uvicorn

from srt_ext.api.reaper import abort_stream

log = logging.getLogger("stream2llm.server")
# /generate is checked in its route: it also carries the chunks of open streams
# (srt_ext/cluster/envelope.py), which must keep working while draining
NEW_WORK = ("/v1/streams", "/v1/completions", "/v1/chat/completions")


class DrainGate:
    """Pure ASGI middleware: 503 for new work while ``app.state.draining``."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and getattr(self.state, "draining", False)
                and scope["method"] == "POST" and scope["path"] in NEW_WORK):  # fmt: skip
            body = orjson.dumps({"error": "the server is shutting down"})
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"connection", b"close")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


async def drain(state: Any, grace: float) -> None:
    """Stop new work, wait up to ``grace`` s for live requests, abort the rest."""
    state.draining = True
    svc = state.svc
    deadline = time.monotonic() + grace
    log.warning("draining: no new work; up to %.0f s for in-flight requests", grace)
    while time.monotonic() < deadline and not svc.link.dead:
        if not any(not st.done for st in svc.link.states.values()):
            break
        await asyncio.sleep(0.05)
    left = [st for st in svc.link.states.values() if not st.done]
    for st in left:
        await abort_stream(svc, st, "shutdown", f"server shut down after a {grace:g} s grace period")
    await asyncio.sleep(0.2)  # let readers of the aborted streams get their answer


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains (see the module docstring);
    a second signal stops at once."""

    def __init__(self, config: uvicorn.Config, state: Any, grace: float) -> None:
        super().__init__(config)
        self.state, self.grace = state, grace
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit:
            self.should_exit = self.force_exit = True
            return
        log.warning("got %s", signal.Signals(sig).name)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await drain(self.state, self.grace)
        except Exception:  # noqa: BLE001  (shutting down regardless)
            log.exception("drain failed")
        self.should_exit = True
