"""A fresh server per benchmark run, for each engine bench-streams compares.

* ``reference``: ``stream2llm serve --engine reference`` as a child process (its
  own HTTP process, as SGLang's server has one: the benchmark's client never
  shares a GIL with the server it measures), log in a file, not on the console;
* ``sglang``: SGLang's own server with stream2llm plugged in (our tree, hooks and
  ``/v1/streams`` routes: ``launch.SGLangServer``);
* ``stock``: the same SGLang server with no plugin at all (``SGLANG_PLUGINS`` names
  no installed plugin) and SGLang's default radix tree: what a user has without
  stream2llm.

Every run gets a new server so no run inherits another's cache or queue.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess as sp
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

ENGINES = ("reference", "sglang", "stock")
REPO_ROOT = Path(__file__).resolve().parents[1]
NO_PLUGIN = "none-such"  # SGLANG_PLUGINS whitelist that matches no entry point


@dataclass(frozen=True)
class ServerSpec:
    """What one run's server is started with (the same for every engine)."""

    engine: str
    model_path: str | None
    max_total_tokens: int
    threads: int = 0  # 0: the engine's default (torch: all cores)
    token_budget: int | None = None  # reference --token-budget / SGLang --chunked-prefill-size
    startup_timeout: float = 900.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reference_argv(spec: ServerSpec, port: int) -> list[str]:
    """``stream2llm serve --engine reference`` with the run's pool and threads."""
    argv = [sys.executable, "-m", "stream2llm.cli", "serve", "--engine", "reference",
            "--host", "127.0.0.1", "--port", str(port),
            "--max-total-tokens", str(spec.max_total_tokens), "--threads", str(spec.threads),
            "--log-level", "warning"]  # fmt: skip
    if spec.model_path:
        argv += ["--model-path", spec.model_path]
    if spec.token_budget:
        argv += ["--token-budget", str(spec.token_budget)]
    return argv


@contextmanager
def _reference(spec: ServerSpec, log_path: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path, "wb") as log:
        proc = sp.Popen(reference_argv(spec, port), stdout=log, stderr=sp.STDOUT, env=env,
                        cwd=str(REPO_ROOT), start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + spec.startup_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"reference server exited with {proc.returncode}; "
                                       f"log {log_path}")  # fmt: skip
                try:
                    if httpx.get(url + "/health", timeout=5.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reference server not healthy; log {log_path}")
                time.sleep(0.5)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except sp.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group started here
                    proc.wait(5)


def sglang_config(spec: ServerSpec) -> SGLangServerConfig:
    """``SGLangServerConfig`` of an ``sglang`` or ``stock`` run (log level info on both:
    the tree check reads SGLang's "Tree cache initialized" line)."""
    stock = spec.engine == "stock"
    return SGLangServerConfig(
        model_path=spec.model_path, max_total_tokens=spec.max_total_tokens,
        threads=spec.threads, chunked_prefill_size=spec.token_budget, log_level="info",
        startup_timeout=spec.startup_timeout,
        radix_cache_backend=None if stock else "stream2llm",
        env={"SGLANG_PLUGINS": NO_PLUGIN} if stock else {},
    )  # fmt: skip


@contextmanager
def running(spec: ServerSpec, log_dir: str | Path | None = None,
            progress: bool = False) -> Iterator[str]:  # fmt: skip
    """Base URL of a freshly started server for ``spec``; stopped on exit."""
    if spec.engine not in ENGINES:
        raise ValueError(f"unknown engine {spec.engine!r}; expected one of {ENGINES}")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="bench-streams-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.engine}-{spec.max_total_tokens}-{int(time.time())}.log"
    if spec.engine == "reference":
        with _reference(spec, log_path) as url:
            yield url
        return
    server = SGLangServer(sglang_config(spec), log_path=log_path)
    with server.start(progress=progress):
        if spec.engine == "sglang" and not server.uses_streaming_tree():
            raise RuntimeError(f"SGLang did not build the streaming tree; log {log_path}")
        if spec.engine == "stock" and server.uses_streaming_tree():
            raise RuntimeError(f"stock SGLang built our tree; log {log_path}")
        yield server.url
