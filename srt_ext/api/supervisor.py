"""Worker supervision: a dead worker is restarted, with bounded retries and backoff.

Why: the worker holds the engine; if it crashes (OOM kill, CUDA error, a bug)
the API room stays up and answers 503 (the ``WorkerLink`` watchdog fails every
waiting request at once), but without a restart the server would be useless
until someone notices. The supervisor restarts it after ``backoff * 2**k``
seconds (``k``: consecutive failures, delay capped at 30 s) and gives up after
``max_restarts`` consecutive failures, leaving ``/health`` at 503 so an outer
orchestrator can take over. A worker that then stays up for ``stable_s``
seconds resets the count, so rare crashes over a long life are always
recovered, while a crash loop is not retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("stream2llm.server")


class Supervisor:
    def __init__(self, link: Any, metrics: Any, max_restarts: int = 5, backoff: float = 1.0,
                 ready_timeout: float = 600.0, stable_s: float = 60.0) -> None:  # fmt: skip
        self.link, self.metrics = link, metrics
        self.max_restarts, self.backoff = max_restarts, backoff
        self.ready_timeout, self.stable_s = ready_timeout, stable_s
        self.failures = 0  # consecutive deaths/failed starts without a stable run
        self.gave_up = False

    async def run(self) -> None:
        """Forever (a lifespan task): watch the link and restart a dead worker."""
        up_since = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            if not self.link.dead:
                if self.failures and time.monotonic() - up_since > self.stable_s:
                    self.failures = 0
                continue
            if self.failures >= self.max_restarts:
                if not self.gave_up:
                    self.gave_up = True
                    log.error("worker dead after %d restarts; giving up (/health stays 503)",
                              self.failures)  # fmt: skip
                continue
            delay = min(30.0, self.backoff * 2**self.failures)
            self.failures += 1
            log.warning("worker down (%s); restart %d/%d in %.1f s", self.link.dead,
                        self.failures, self.max_restarts, delay)  # fmt: skip
            await asyncio.sleep(delay)
            try:
                await self.link.restart(self.ready_timeout)
            except Exception as exc:  # noqa: BLE001  (retry with a longer delay)
                log.error("worker restart failed: %s", exc)
                self.link.dead = self.link.dead or f"worker restart failed: {exc}"
                continue
            up_since = time.monotonic()
            self.metrics.worker_restarts.inc()
            log.warning("worker restarted (generation %d)", self.link.generation)
