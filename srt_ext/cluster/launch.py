"""``Cluster``: N ``stream2llm serve`` replicas, SGLang's router, and the gateway.

Why these router flags (docs/scale-out.md explains each in full):

- ``--policy manual --assignment-mode min_load``: every call of a stream carries
  ``X-SMG-Routing-Key: <rid>``; a new key goes to the replica with the fewest
  requests in flight (the open's lease makes that "fewest open streams") and
  stays there while that replica is healthy.
- ``--health-check-endpoint /livez``: a draining replica (SIGTERM) refuses new
  work but must keep receiving its own streams' chunks; ``/health`` says 503
  while draining, ``/livez`` says whether the process and its worker are alive.
- ``--disable-retries --disable-circuit-breaker``: a chunk is not idempotent (a
  retry could apply it twice), and a replica's 503 ("draining", "worker
  restarting") must not make the router move its streams; dead replicas are
  found by the 1 s health checks instead.

Each child runs in its own session, so Ctrl-C reaches only the launcher, which
stops them in order: the gateway refuses new work, the replicas drain (their
open streams finish or end with a 410 after ``--shutdown-grace``), then the
router and the gateway stop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess as sp
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

log = logging.getLogger("stream2llm.cluster")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    serve_args: list[str] = field(default_factory=list)  # passed to every replica
    disaggregation: bool = False  # each replica = a prefill server + its decode server
    threads: int = 1  # torch threads per replica
    shutdown_grace: float = 30.0
    health_interval_s: int = 1
    log_dir: str | None = None  # child logs (default: inherit the launcher's stderr)
    startup_timeout: float = 600.0


@dataclass
class _Child:
    name: str
    argv: list[str]
    url: str | None = None
    proc: sp.Popen[bytes] | None = None
    log: IO[bytes] | None = None


class Cluster:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.router_port = spec.router_port or free_port(spec.host)
        self.port = spec.port or free_port(spec.host)
        self.replicas: list[_Child] = []
        self.decoders: list[_Child] = []
        for i in range(spec.replicas):
            self.replicas.append(self._replica(i))
        self.router = _Child("router", self._router_argv(), f"http://{spec.host}:{self.router_port}")
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    # ---- the children ----------------------------------------------------------------
    def _serve(self, *args: str) -> list[str]:
        # replicas are reference servers until the cluster runs SGLang's (issue 20)
        return [sys.executable, "-m", "stream2llm.cli", "serve", "--engine", "reference",
                "--host", self.spec.host,
                "--threads", str(self.spec.threads), "--log-level", "warning",
                "--shutdown-grace", f"{self.spec.shutdown_grace:g}", *args]  # fmt: skip

    def _replica(self, i: int) -> _Child:
        port = free_port(self.spec.host)
        extra = list(self.spec.serve_args)
        if self.spec.disaggregation:
            boot = f"tcp://{self.spec.host}:{free_port(self.spec.host)}"
            self.decoders.append(_Child(f"decode{i}", self._serve(
                "--port", "0", "--disaggregation-mode", "decode", "--bootstrap", boot, *extra)))
            extra += ["--disaggregation-mode", "prefill", "--decode-url", boot]
        return _Child(f"replica{i}", self._serve("--port", str(port), *extra),
                      f"http://{self.spec.host}:{port}")  # fmt: skip

    def _router_argv(self) -> list[str]:
        s = self.spec
        return [sys.executable, "-m", "sglang_router.launch_router", "--host", s.host,
                "--port", str(self.router_port),
                "--worker-urls", *[r.url for r in self.replicas if r.url],
                "--policy", "manual", "--assignment-mode", "min_load",
                "--max-idle-secs", "3600", "--eviction-interval-secs", "60",
                "--health-check-endpoint", "/livez",
                "--health-check-interval-secs", str(s.health_interval_s),
                "--health-failure-threshold", "2", "--health-success-threshold", "1",
                "--health-check-timeout-secs", "5",
                "--disable-retries", "--disable-circuit-breaker",
                "--request-timeout-secs", "86400",
                "--shutdown-grace-period-secs", "5",
                "--worker-startup-timeout-secs", str(int(s.startup_timeout)),
                "--worker-startup-check-interval", "1",
                "--prometheus-host", s.host, "--prometheus-port", str(free_port(s.host)),
                "--log-level", "warn"]  # fmt: skip

    def _spawn(self, c: _Child) -> None:
        out: Any = None
        if self.spec.log_dir:
            Path(self.spec.log_dir).mkdir(parents=True, exist_ok=True)
            c.log = open(Path(self.spec.log_dir) / f"{c.name}.log", "ab")  # noqa: SIM115
            out = c.log
        env = dict(os.environ, OMP_NUM_THREADS=str(self.spec.threads))
        c.proc = sp.Popen(c.argv, stdout=out, stderr=out, env=env, start_new_session=True)

    def _wait(self, c: _Child, path: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if c.proc is not None and c.proc.poll() is not None:
                raise RuntimeError(f"{c.name} exited during startup (code {c.proc.returncode}); "
                                   f"see {self.spec.log_dir or 'stderr'}")  # fmt: skip
            try:
                if httpx.get(f"{c.url}{path}", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{c.name} not healthy within {self.spec.startup_timeout:g} s")

    def _router_ready(self, deadline: float) -> None:
        """The router answers and lists every replica as healthy."""
        while time.monotonic() < deadline:
            if self.router.proc is not None and self.router.proc.poll() is not None:
                raise RuntimeError(f"the router exited during startup (code {self.router.proc.returncode})")
            try:
                w = httpx.get(f"{self.router.url}/workers", timeout=5.0).json()["workers"]
                if len(w) == len(self.replicas) and all(x["is_healthy"] for x in w):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the router did not register every replica in time")

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> Cluster:
        err = router_available()
        if err:
            raise RuntimeError(err)
        deadline = time.monotonic() + self.spec.startup_timeout
        try:
            for c in self.decoders + self.replicas:
                self._spawn(c)
            for c in self.replicas:
                self._wait(c, "/livez", deadline)
            self.start_router(deadline)
            self._start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def start_router(self, deadline: float | None = None) -> None:
        self._spawn(self.router)
        self._router_ready(deadline or time.monotonic() + self.spec.startup_timeout)

    def _start_gateway(self) -> None:
        import uvicorn

        from srt_ext.cluster.gateway import create_gateway_app

        self.app = create_gateway_app(str(self.router.url), self.replica_urls)
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
        return [str(c.url) for c in self.replicas]

    def kill_replica(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill replica ``i`` (and its worker: the whole session) for failover tests."""
        c = self.replicas[i]
        if c.proc is not None and c.proc.poll() is None:
            os.killpg(c.proc.pid, sig)
            c.proc.wait(30)

    def restart_replica(self, i: int) -> None:
        c = self.replicas[i]
        self.kill_replica(i)
        self._spawn(c)
        self._wait(c, "/livez", time.monotonic() + self.spec.startup_timeout)

    def kill_router(self) -> None:
        _terminate([self.router], signal.SIGKILL, 10)

    def stop(self) -> None:
        """Drain together: new work refused, replicas drain, then router and gateway stop."""
        if self.app is not None:
            self.app.state.gw.draining = True
        _terminate(self.replicas, signal.SIGTERM, self.spec.shutdown_grace + 30)
        _terminate(self.decoders + [self.router], signal.SIGTERM, 15)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        for c in self.decoders + self.replicas + [self.router]:
            if c.log is not None:
                c.log.close()
                c.log = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(children: list[_Child], sig: int, timeout: float) -> None:
    """Signal every child's session at once, wait for all, SIGKILL what is left."""
    live = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for c in live:  # the main process only: a server stops its own worker when done
        assert c.proc is not None
        c.proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    for c in live:
        assert c.proc is not None
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except sp.TimeoutExpired:
            log.warning("%s did not stop in %.0f s: killing it", c.name, timeout)
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait(10)
        try:  # anything of its session still alive (a worker whose server was killed)
            os.killpg(c.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
