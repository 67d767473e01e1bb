"""``Cluster``: N SGLang servers with our plugin, SGLang's router, and the gateway.

What runs where (docs/scale-out.md has the why):

- **replicas**: each one SGLang server (``SGLangReplica``: SGLang's HTTP server,
  TokenizerManager, Scheduler with our tree and hooks, Detokenizer), its own KV
  pool, on a fixed loopback port (a restarted replica keeps its URL); with
  ``disaggregation`` a prefill/decode pair of SGLang servers (``PDReplica``),
  streams on the prefill server, the router in its PD mode.
- **sglang-router** (Rust, ``python -m sglang_router.launch_router``): every
  one-shot request (``/generate``, the OpenAI routes, ``/v1/models``), with its
  own policy (``cache_aware``) and health checks on SGLang's ``/health``.
- **the gateway** (``gateway.py``, in this process): the cluster's public URL.
  Stream calls go to the replica that holds the stream (pinned by stream id at
  the open, placed on the replica with the fewest open streams); the router
  cannot carry them (it answers 404 on ``/v1/streams``). Everything else goes
  to the router.

Stopping drains together: the gateway refuses new work (503), open streams get
``shutdown_grace`` seconds to finish (their chunks and reads still reach their
replicas), the rest are aborted (later calls: 410), then the replicas get
SIGTERM (SGLang drains what is in flight), then the router stops.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess as sp
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from srt_ext.cluster.replicas import (
    PDReplica,
    Replica,
    SGLangReplica,
    disaggregated_replica_missing,
    free_port,
)
from srt_ext.engines.sglang.launch import SGLangServerConfig

log = logging.getLogger("stream2llm.cluster")
ROUTER_POLICY = "cache_aware"


def router_available() -> str | None:
    """Why the router cannot run here (None when it can)."""
    try:
        import sglang_router  # noqa: F401
    except ImportError as exc:
        return f"sglang-router is not installed ({exc}); pip install sglang-router==0.3.2"
    return None


@dataclass
class ClusterSpec:
    replicas: int = 2
    host: str = "127.0.0.1"
    port: int = 0  # the gateway (the cluster's public URL); 0: a free port
    router_port: int = 0
    # every replica's SGLang server (host and port are the cluster's to set)
    server: SGLangServerConfig = field(default_factory=SGLangServerConfig)
    disaggregation: bool = False  # each replica = a prefill/decode pair (replicas.PDReplica)
    shutdown_grace: float = 30.0  # SIGTERM: seconds open streams get to finish
    health_interval_s: float = 1.0
    log_dir: str | None = None  # one log file per child (default: temp files)
    startup_timeout: float = 600.0


@dataclass
class _Router:
    argv: list[str]
    url: str
    proc: sp.Popen[bytes] | None = None
    log: IO[bytes] | None = None


class Cluster:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager)."""

    def __init__(self, spec: ClusterSpec) -> None:
        if spec.disaggregation and disaggregated_replica_missing():
            raise RuntimeError(disaggregated_replica_missing())
        self.spec = spec
        self.router_port = spec.router_port or free_port(spec.host)
        self.port = spec.port or free_port(spec.host)
        cfg = spec.server
        base = dataclasses.replace(cfg, host=spec.host, port=0, startup_timeout=spec.startup_timeout)
        kind = PDReplica if spec.disaggregation else SGLangReplica
        self.replicas: list[Replica] = [kind(f"replica{i}", base, spec.log_dir)
                                        for i in range(spec.replicas)]  # fmt: skip
        self.router = _Router([], f"http://{spec.host}:{self.router_port}")
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    # ---- the router -----------------------------------------------------------------
    def _router_workers(self) -> list[str]:
        """Plain workers, or the router's PD mode when any replica is a prefill/decode pair."""
        ws = [w for r in self.replicas for w in r.router_workers()]
        if all(kind == "regular" for kind, _, _ in ws):
            return ["--worker-urls", *[url for _, url, _ in ws]]
        argv = ["--pd-disaggregation"]
        for kind, url, boot in ws:
            if kind == "prefill":
                argv += ["--prefill", url, str(boot) if boot else "none"]
            elif kind == "decode":
                argv += ["--decode", url]
            else:
                raise RuntimeError(f"the router's PD mode cannot also take a plain worker ({url})")
        return argv

    def _router_argv(self) -> list[str]:
        s = self.spec
        return [sys.executable, "-m", "sglang_router.launch_router", "--host", s.host,
                "--port", str(self.router_port), *self._router_workers(),
                "--policy", ROUTER_POLICY,
                "--health-check-endpoint", "/health",
                "--health-check-interval-secs", str(max(1, int(s.health_interval_s))),
                "--health-failure-threshold", "2", "--health-success-threshold", "1",
                "--health-check-timeout-secs", "5",
                "--disable-retries", "--disable-circuit-breaker",
                "--request-timeout-secs", "3600",
                "--shutdown-grace-period-secs", "5",
                "--worker-startup-timeout-secs", str(int(s.startup_timeout)),
                "--worker-startup-check-interval", "1",
                "--prometheus-host", s.host, "--prometheus-port", str(free_port(s.host)),
                "--log-level", "warn"]  # fmt: skip

    def start_router(self, deadline: float | None = None) -> None:
        r = self.router
        r.argv = self._router_argv()
        out: Any = None
        if self.spec.log_dir:
            Path(self.spec.log_dir).mkdir(parents=True, exist_ok=True)
            r.log = open(Path(self.spec.log_dir) / "router.log", "ab")  # noqa: SIM115
            out = r.log
        r.proc = sp.Popen(r.argv, stdout=out, stderr=out, start_new_session=True)
        deadline = deadline or time.monotonic() + self.spec.startup_timeout
        while time.monotonic() < deadline:  # it answers and lists every live replica healthy
            if r.proc.poll() is not None:
                raise RuntimeError(f"the router exited during startup (code {r.proc.returncode})")
            try:
                w = httpx.get(f"{r.url}/workers", timeout=5.0).json()["workers"]
                want = sum(len(x.router_workers()) for x in self.replicas)
                live = sum(len(x.router_workers()) for x in self.replicas if x.alive())
                if len(w) == want and sum(bool(x["is_healthy"]) for x in w) >= live:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the router did not register every replica in time")

    def kill_router(self) -> None:
        _stop_proc(self.router.proc, signal.SIGKILL, 10)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> Cluster:
        err = router_available()
        if err:
            raise RuntimeError(err)
        try:
            with ThreadPoolExecutor(len(self.replicas)) as pool:  # start-up is import-bound
                for f in [pool.submit(r.start) for r in self.replicas]:
                    f.result()
            self.start_router()
            self._start_gateway()
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def _start_gateway(self) -> None:
        import uvicorn

        from srt_ext.cluster.gateway import create_gateway_app

        idle = self.spec.server.stream_idle_timeout
        self.app = create_gateway_app(
            str(self.router.url), [(r.name, r.url) for r in self.replicas],
            health_interval_s=self.spec.health_interval_s,
            stream_idle_timeout=300.0 if idle is None else idle)  # fmt: skip
        config = uvicorn.Config(self.app, host=self.spec.host, port=self.port, log_level="warning",
                                timeout_graceful_shutdown=5)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="stream2llm-gateway",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def replica_urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def kill_replica(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill replica ``i`` (its whole process group) for failover tests."""
        self.replicas[i].kill(sig)

    def restart_replica(self, i: int) -> None:
        """A new process on the same URL (streams of the old one get 410)."""
        self.replicas[i].kill()
        self.replicas[i].start()

    def stop(self, grace: float | None = None) -> None:
        """Drain together: new work refused, open streams finish (up to the grace),
        the rest aborted, then replicas (SIGTERM), router and gateway stop."""
        grace = self.spec.shutdown_grace if grace is None else grace
        gw = self.app.state.gw if self.app is not None else None
        if gw is not None and self._thread is not None and self._thread.is_alive():
            gw.draining = True
            gw.wait_quiet(grace)
            gw.abort_all(f"the cluster shut down (its {grace:g} s grace ended first)")
        with ThreadPoolExecutor(max(1, len(self.replicas))) as pool:
            list(pool.map(lambda r: r.stop(30.0), self.replicas))
        _stop_proc(self.router.proc, signal.SIGTERM, 15)
        if self.router.log is not None:
            self.router.log.close()
            self.router.log = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_proc(proc: sp.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except sp.TimeoutExpired:
            log.warning("pid %d did not stop in %.0f s: killing it", proc.pid, timeout)
    try:  # anything of its session still alive
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)
