"""``launch_server``: a real server on a free loopback port, as a context manager.

Tests, the demo and replay need a server they can start and stop from Python.
By default uvicorn runs in a background thread of the caller (the worker is
still its own process), which starts fastest; ``subprocess=True`` runs
``stream2llm serve`` as a child process instead, for full isolation.
"""

from __future__ import annotations

import socket
import subprocess as sp
import sys
import threading
import time
from typing import Any

import httpx

from srt_ext.api.options import ServerOptions

# ServerOptions passed on to `stream2llm serve` as --the-same-name
RELIABILITY_FLAGS = ("stream_idle_timeout", "reader_disconnect", "max_input_tokens",
                     "max_streams_per_client", "max_body_bytes", "max_worker_restarts",
                     "restart_backoff", "shutdown_grace")  # fmt: skip


class ServerHandle:
    """A running server; ``stop()`` (or leaving the ``with``) shuts it down and
    stops its worker process."""

    def __init__(self, url: str, api_key: str | None, server: Any = None,
                 thread: threading.Thread | None = None, proc: sp.Popen[bytes] | None = None) -> None:  # fmt: skip
        self.url, self.api_key = url, api_key
        self._server, self._thread, self._proc = server, thread, proc

    def client(self, **kw: Any) -> Any:
        from srt_ext.client.rest import Client

        return Client(self.url, api_key=self.api_key, **kw)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except sp.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def _wait_healthy(h: ServerHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not h.alive():
            raise RuntimeError("the server exited during startup (see its log)")
        try:
            if httpx.get(h.url + "/health", timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    h.stop()
    raise RuntimeError(f"the server did not become healthy within {timeout} s")


def launch_server(host: str = "127.0.0.1", port: int = 0, subprocess: bool = False,
                  startup_timeout: float = 600.0, log_level: str = "warning",
                  **opts: Any) -> ServerHandle:  # fmt: skip
    """Start a server (options by the flat names of ``stream2llm serve``'s flags:
    model_path, max_total_tokens, scheduler, preemption, cost_model, token_budget,
    api_key, threads, ...; see ``ServerOptions.from_flags``) and wait until
    ``/health`` answers 200."""
    o = ServerOptions.from_flags(**opts)
    if subprocess:
        if port == 0:
            with _free_socket(host) as s:
                port = s.getsockname()[1]
        w = o.worker
        argv = [sys.executable, "-m", "stream2llm.cli", "serve", "--engine", "reference",
                "--host", host, "--port", str(port),
                "--max-total-tokens", str(w.max_total_tokens), "--scheduler", w.policy,
                "--preemption", w.preemption, "--token-budget", str(w.token_budget),
                "--device", w.device, "--threads", str(w.threads)]  # fmt: skip
        for flag, val in (("--model-path", w.model_path), ("--cost-model", w.cost_model),
                          ("--api-key", o.api_key), ("--api-key-file", o.api_key_file),
                          ("--worker-cpus", ",".join(map(str, w.cpus)))):  # fmt: skip
            if val:
                argv += [flag, val]
        for name in RELIABILITY_FLAGS:
            val = getattr(o, name)
            argv += ["--" + name.replace("_", "-"), str(val if val is not None else 0)]
        h = ServerHandle(f"http://{host}:{port}", o.api_key, proc=sp.Popen(argv))
        _wait_healthy(h, startup_timeout)
        return h
    import uvicorn

    from srt_ext.api.server import create_app

    sock = _free_socket(host) if port == 0 else None
    if sock is not None:
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(o), host=host, port=port, log_level=log_level,
                            lifespan="on", timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    # no signal handlers to disable: uvicorn installs them only on the main thread
    # (Server.capture_signals) and this server runs on its own thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock] if sock else None},
                              name="stream2llm-uvicorn", daemon=True)  # fmt: skip
    thread.start()
    h = ServerHandle(f"http://{host}:{port}", o.api_key, server=server, thread=thread)
    _wait_healthy(h, startup_timeout)
    return h
