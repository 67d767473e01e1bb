"""``ServerOptions``: how one server (API process + its worker) is configured.

The API process's own settings (keys, limits, timeouts) are fields here; everything
the worker needs is one embedded ``WorkerConfig`` (srt_ext/worker/config.py), so no
worker default is written twice. ``stream2llm serve`` reads its flags' defaults from
these classes, and ``from_flags`` builds options from the flags' flat names (what
``launch_server`` and the tests pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgspec

from srt_ext.worker.config import WorkerConfig

# the flat name `stream2llm serve` uses for a worker field, where it differs
_FLAG_NAMES = {"scheduler": "policy"}
_WORKER_FIELDS = {f.name for f in msgspec.structs.fields(WorkerConfig)} - {"in_addr", "out_addr"}


@dataclass
class ServerOptions:
    worker: WorkerConfig = field(default_factory=WorkerConfig)  # model, KV pool, scheduler
    api_key: str | None = None
    api_key_file: str | None = None  # "NAME KEY" lines: several keys, limits per key
    start_method: str = "forkserver"
    health_timeout: float = 10.0
    ready_timeout: float = 600.0
    # reliability (docs/reliability.md); None/0 disables a limit
    stream_idle_timeout: float | None = 300.0  # reap streams with no chunk/reader this long
    reader_disconnect: str = "keep"  # "abort": a stream's SSE reader leaving aborts it
    max_input_tokens: int | None = None  # per-request input limit (400 over it)
    max_streams_per_client: int | None = None  # live streams per client IP (429 over it)
    max_body_bytes: int = 8 << 20  # request body limit (413 over it)
    max_worker_restarts: int = 5  # consecutive restarts of a dead worker before giving up
    restart_backoff: float = 1.0  # first restart delay; doubles per consecutive failure
    shutdown_grace: float = 30.0  # SIGTERM: seconds in-flight requests get to finish

    @classmethod
    def from_flags(cls, **kw: Any) -> ServerOptions:
        """Options from flat names as ``stream2llm serve`` spells them (``model_path``,
        ``max_total_tokens``, ``scheduler``, ``token_budget``, ``api_key``, ...)."""
        kw = {_FLAG_NAMES.get(k, k): v for k, v in kw.items()}
        worker = {k: kw.pop(k) for k in list(kw) if k in _WORKER_FIELDS}
        bad = set(kw) - {f.name for f in fields(cls)} - {"worker"}
        if bad:
            raise TypeError(f"unknown server options: {sorted(bad)}")
        return cls(worker=WorkerConfig(**worker), **kw)

    def worker_config(self, in_addr: str, out_addr: str, model_path: str) -> WorkerConfig:
        """The worker's config for one start: its socket addresses, the resolved model."""
        return msgspec.structs.replace(self.worker, in_addr=in_addr, out_addr=out_addr,
                                       model_path=model_path)  # fmt: skip
