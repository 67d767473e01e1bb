"""Start and stop SGLang's own HTTP server with stream2llm plugged in.

``SGLangServer`` runs ``python -m srt_ext.engines.sglang.server_main`` (SGLang's
``launch_server`` with our CPU stack active in every process) as a child on a
loopback port, with ``--radix-cache-backend stream2llm`` (our tree) and our
``sglang.srt.plugins`` entry points (hooks, stream handlers) loaded by SGLang in
each of its processes. It waits for ``/health`` with a progress bar and stops
the whole process group on exit.

Start-up on CPU is dominated by importing sglang in the three processes (the
server, its scheduler and detokenizer; 15-25 s each on the 2-core box), so the
child gets ``SGLANG_DISABLED_MODEL_ARCHS`` listing every model module except the
one the checkpoint needs (SGLang otherwise imports all ~270), and a small
``--max-total-tokens`` (the default pool is sized to free memory: ~15 GB).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess as sp
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[3]
# the reference server's chat fallback (srt_ext/api/tokenizer.py) as a Jinja
# template, for checkpoints that ship none (SGLang's chat route refuses them)
PLAIN_CHAT_TEMPLATE = Path(__file__).with_name("plain_chat.jinja")
TREE_CACHE_LINE = "impl=StreamingRadixCache"


class SGLangStartupError(RuntimeError):
    """SGLang's server exited or never became healthy; the message ends with its log tail."""


@dataclass
class SGLangServerConfig:
    """What ``stream2llm serve --engine sglang`` and the tests launch."""

    model_path: str | None = None  # a name or a dir (model_store.resolve_model); None: default
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    device: str = "cpu"
    max_total_tokens: int = 4096
    chunked_prefill_size: int | None = None
    policy: str | None = None  # STREAM2LLM_POLICY in the scheduler process
    api_key: str | None = None
    log_level: str = "info"
    threads: int = 0  # OMP/torch threads per SGLang process (0: SGLang's choice)
    startup_timeout: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # bench-streams' stock baseline: None leaves out --radix-cache-backend, so SGLang builds
    # its default tree (pair with env SGLANG_PLUGINS=none-such: no plugin loaded at all)
    radix_cache_backend: str | None = "stream2llm"
    # SGLang's --dtype. None: float32 on CPU, SGLang's auto elsewhere. Its auto reads
    # the checkpoint's float16/bfloat16, which a CPU without AVX512-BF16/AMX runs
    # emulated: a SmolLM2 linear layer here does 75 GFLOP/s in float32, 12 in float16.
    dtype: str | None = None
    # SGLang's overlap scheduling. None: off on CPU, where a forward runs on the
    # scheduler's own thread: there is no device to overlap with, and overlap only
    # delays each batch's results (first tokens, parking) until the next forward ends.
    overlap_schedule: bool | None = None
    # serve's options our hooks enforce in SGLang's processes (``option_env``)
    api_key_file: str | None = None  # several keys ("NAME KEY" lines): http_policy.KeyAuth
    max_input_tokens: int | None = None  # 400 over it
    max_streams_per_client: int | None = None  # 429 over it
    max_body_bytes: int | None = None  # 413 over it
    reader_disconnect: str = "keep"  # keep | abort
    stream_idle_timeout: float | None = None  # None: the frontend's default (300 s); 0: never
    preemption: str | None = None  # cost | recompute | swap (the scheduler's StreamTable)
    cost_model: str | None = None  # profile name or file (the scheduler's StreamTable)
    worker_cpus: tuple[int, ...] = ()  # CPU ids all of SGLang's processes run on (): any
    shutdown_grace: float = 30.0  # stop(): seconds SGLang drains in-flight requests
    # SGLang's own prefill/decode disaggregation (disagg/launch.py: PDPair starts a pair)
    disaggregation_mode: str = "null"  # null | prefill | decode
    transfer_backend: str = "zmq"  # --disaggregation-transfer-backend (zmq: ours, CPU-capable)
    bootstrap_port: int | None = None  # the prefill server's bootstrap port (None: SGLang's)
    decode_url: str | None = None  # prefill: the decode server a stream's final chunk goes to


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def disabled_model_modules(model_path: str) -> list[str]:
    """Every module of ``sglang.srt.models`` except the one named after the
    checkpoint's ``model_type`` (empty when there is no such module: then SGLang
    imports them all, as it does by default)."""
    import importlib.util

    try:
        model_type = json.loads((Path(model_path) / "config.json").read_text())["model_type"]
    except (OSError, KeyError, ValueError):
        return []
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return []
    models = Path(list(spec.submodule_search_locations)[0]) / "srt" / "models"
    names = sorted(p.stem for p in models.glob("*.py") if p.stem not in ("__init__", "registry"))
    if model_type not in names:
        return []
    return [n for n in names if n != model_type]


def has_chat_template(model_path: str) -> bool:
    try:
        tok_cfg = json.loads((Path(model_path) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(tok_cfg.get("chat_template")) or (Path(model_path) / "chat_template.jinja").exists()


def pin(pid: int, cpus: tuple[int, ...]) -> None:
    """``--worker-cpus``: run SGLang's server on ``cpus``. Set right after the
    fork, while the child is still importing, so the scheduler and detokenizer
    processes it spawns later inherit the mask."""
    if cpus:
        os.sched_setaffinity(pid, cpus)


def server_argv(cfg: SGLangServerConfig, model_path: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "srt_ext.engines.sglang.server_main",
            "--model-path", model_path, "--host", cfg.host, "--port", str(port),
            "--device", cfg.device, "--max-total-tokens", str(cfg.max_total_tokens),
            "--skip-server-warmup", "--log-level", cfg.log_level]  # fmt: skip
    if cfg.radix_cache_backend:
        argv += ["--radix-cache-backend", cfg.radix_cache_backend]
    if cfg.device == "cpu":
        argv += ["--attention-backend", "torch_native"]
    overlap = cfg.device != "cpu" if cfg.overlap_schedule is None else cfg.overlap_schedule
    if not overlap:
        argv += ["--disable-overlap-schedule"]
    if cfg.chunked_prefill_size:
        argv += ["--chunked-prefill-size", str(cfg.chunked_prefill_size)]
    if cfg.api_key and not cfg.api_key_file:  # with a key file it is one of our keys
        argv += ["--api-key", cfg.api_key]
    dtype = cfg.dtype or ("float32" if cfg.device == "cpu" else None)
    if dtype:
        argv += ["--dtype", dtype]
    if cfg.disaggregation_mode != "null":
        from srt_ext.engines.sglang.disagg.launch import pd_args

        argv += pd_args(cfg.disaggregation_mode, cfg.transfer_backend, cfg.bootstrap_port)
    if not has_chat_template(model_path) and "--chat-template" not in cfg.extra_args:
        argv += ["--chat-template", str(PLAIN_CHAT_TEMPLATE)]
    return argv + list(cfg.extra_args)


def option_env(cfg: SGLangServerConfig) -> dict[str, str]:
    """The environment that carries ``serve``'s options into SGLang's processes,
    where our hooks read them: the HTTP process (``http_policy``, ``frontend``) and
    the scheduler (``state.StreamTable``). Only options that are set travel."""
    from srt_ext.engines.sglang import http_policy as hp
    from srt_ext.engines.sglang import state

    values: dict[str, Any] = {
        hp.API_KEY_FILE_ENV: cfg.api_key_file and str(Path(cfg.api_key_file).resolve()),
        hp.API_KEY_ENV: cfg.api_key if cfg.api_key_file else None,
        hp.MAX_INPUT_ENV: cfg.max_input_tokens or None,
        hp.MAX_STREAMS_ENV: cfg.max_streams_per_client or None,
        hp.MAX_BODY_ENV: cfg.max_body_bytes or None,
        hp.READER_ENV: cfg.reader_disconnect if cfg.reader_disconnect != "keep" else None,
        hp.IDLE_ENV: None if cfg.stream_idle_timeout is None else f"{cfg.stream_idle_timeout:g}",
        state.PREEMPTION_ENV: cfg.preemption,
        # serve's default profile, as the reference engine's; on a GPU none ships for
        # an arbitrary model, and without one retraction recomputes (SGLang's own way)
        state.COST_MODEL_ENV: cfg.cost_model or ("cpu-reference" if cfg.device == "cpu" else None),
        state.POLICY_ENV: cfg.policy,
        "OMP_NUM_THREADS": str(cfg.threads) if cfg.threads else None,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def server_env(cfg: SGLangServerConfig, model_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    # our packages first on the children's path (the checkout this runs from)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if cfg.device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"  # without it the model takes a CUDA-only rope path
    disabled = disabled_model_modules(model_path)
    if disabled and "SGLANG_DISABLED_MODEL_ARCHS" not in env:
        env["SGLANG_DISABLED_MODEL_ARCHS"] = ",".join(disabled)
    env.update(option_env(cfg))
    if cfg.disaggregation_mode == "prefill" and cfg.decode_url:
        from srt_ext.engines.sglang.disagg.launch import pd_env

        env.update(pd_env(cfg))
    env.update(cfg.env)
    return env


class SGLangServer:
    """One SGLang server child process; ``with SGLangServer(cfg) as s: s.url``."""

    def __init__(self, cfg: SGLangServerConfig | None = None, log_path: str | Path | None = None):
        self.cfg = cfg or SGLangServerConfig()
        self.proc: sp.Popen[bytes] | None = None
        self.url = ""
        self.startup_s = float("nan")
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="sglang-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._log: IO[bytes] | None = None

    # ---- lifecycle -------------------------------------------------------
    def start(self, progress: bool = True) -> SGLangServer:
        from srt_ext.engines.reference.model_store import resolve_model

        cfg = self.cfg
        model_path = str(resolve_model(cfg.model_path))
        port = cfg.port or _free_port(cfg.host)
        self.url = f"http://{cfg.host}:{port}"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        t0 = time.monotonic()
        self.proc = sp.Popen(server_argv(cfg, model_path, port), env=server_env(cfg, model_path),
                             stdout=self._log, stderr=sp.STDOUT, start_new_session=True,
                             cwd=str(REPO_ROOT))  # fmt: skip
        try:
            pin(self.proc.pid, cfg.worker_cpus)
            self._wait_healthy(progress)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, progress: bool) -> None:
        from tqdm import tqdm

        assert self.proc is not None
        deadline = time.monotonic() + self.cfg.startup_timeout
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {}
        with tqdm(desc="starting SGLang server", unit="s", disable=not progress, mininterval=5,
                  bar_format="{desc}: {elapsed} {postfix}") as bar:  # fmt: skip
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SGLangStartupError(
                        f"SGLang's server exited with {self.proc.returncode} during start-up; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    r = httpx.get(self.url + "/health", headers=headers, timeout=5.0)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                bar.set_postfix_str(self._last_log_line()[:60], refresh=False)
                bar.update(1)
                time.sleep(1.0)
        raise SGLangStartupError(
            f"SGLang's server did not become healthy within {self.cfg.startup_timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to SGLang's server (it drains in-flight requests, then stops its
        scheduler and detokenizer), then SIGKILL to the process group it leads if
        anything is left after ``timeout`` (default ``shutdown_grace``) seconds."""
        timeout = self.cfg.shutdown_grace if timeout is None else timeout
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except sp.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this class started
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> SGLangServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- log -------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def _last_log_line(self) -> str:
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def uses_streaming_tree(self) -> bool:
        """SGLang logged that its scheduler built our ``StreamingRadixCache``."""
        return TREE_CACHE_LINE in self.log_text()


def launch_sglang_server(**kw: Any) -> SGLangServer:
    """``SGLangServer(SGLangServerConfig(**kw)).start()``."""
    progress = kw.pop("progress", True)
    log_path = kw.pop("log_path", None)
    return SGLangServer(SGLangServerConfig(**kw), log_path=log_path).start(progress=progress)
