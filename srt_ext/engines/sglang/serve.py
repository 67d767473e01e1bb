"""``stream2llm serve --engine sglang``: SGLang's own server in the foreground.

The server, its TokenizerManager, Scheduler (with our tree, policy and hooks),
DetokenizerManager and ModelRunner are SGLang's; ``launch.SGLangServer`` starts
them as a child process group, and this waits until it exits or the user stops
it (Ctrl-C / SIGTERM stop the whole group).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig, SGLangStartupError


@dataclass(frozen=True)
class Mapped:
    """Honoured: the option becomes ``SGLangServerConfig.<field>`` (``convert``ed);
    ``refuse`` names a value this engine cannot serve (None: it can)."""

    field: str
    how: str
    convert: Callable[[Any], Any] = lambda v: v
    refuse: Callable[[Any], str | None] = lambda v: None


@dataclass(frozen=True)
class Refused:
    """Not honoured on SGLang's engine: refused unless left at its default."""

    why: str


@dataclass(frozen=True)
class Local:
    """Read by ``stream2llm serve`` itself, not by the engine."""

    how: str


def _unset(value: Any) -> Any:
    """0 or an empty value means "no limit" / "unset" for ``serve``'s options."""
    return value or None


def _dtype(value: str) -> str | None:
    return None if value == "auto" else value


def _dtype_refused(value: str) -> str | None:
    if value in ("auto", "float32", "bfloat16"):
        return None
    return (f"--dtype {value} on --engine sglang: SGLang serves auto, float32, bfloat16 "
            f"({value} is the reference engine's fixed-tile exact path: --engine reference)")  # fmt: skip


_DISAGG = "a --disaggregation-mode option of --engine reference only"


def _decode_url_refused(value: str | None) -> str | None:
    if value is None or value.startswith(("http://", "https://")):
        return None
    return (f"--decode-url {value} on --engine sglang: the decode server's HTTP URL "
            "(http://HOST:PORT); tcp:// is the reference engine's")  # fmt: skip
_RESTARTS = ("a reference worker option: SGLang's scheduler is not restarted by us "
             "(its server exits with it; run it under a supervisor)")  # fmt: skip

# every `serve` option (argparse dest) -> how SGLang's engine honours it; written once,
# read by `refused` (CLI check), `config_from_args` (the launch) and docs/api.md
OPTIONS: dict[str, Mapped | Refused | Local] = {
    "engine": Local("picks this engine"),
    "func": Local("argparse's handler"),
    "command": Local("the stream2llm subcommand"),
    "model_path": Mapped("model_path", "SGLang's --model-path (names resolved as the reference)"),
    "host": Mapped("host", "SGLang's --host"),
    "port": Mapped("port", "SGLang's --port"),
    "device": Mapped("device", "SGLang's --device"),
    "max_total_tokens": Mapped("max_total_tokens", "SGLang's --max-total-tokens (KV pool)"),
    "token_budget": Mapped("chunked_prefill_size", "SGLang's --chunked-prefill-size"),
    "log_level": Mapped("log_level", "SGLang's --log-level"),
    "dtype": Mapped("dtype", "SGLang's --dtype", _dtype, _dtype_refused),
    "threads": Mapped("threads", "OMP_NUM_THREADS of each SGLang process"),
    "worker_cpus": Mapped("worker_cpus", "all of SGLang's processes pinned to these CPUs", tuple),
    "scheduler": Mapped("policy", "our policy in SGLang's scheduler (STREAM2LLM_POLICY)"),
    "preemption": Mapped("preemption", "the scheduler's StreamTable.preemption "
                                       "(STREAM2LLM_PREEMPTION)"),  # fmt: skip
    "cost_model": Mapped("cost_model", "the scheduler's cost model (STREAM2LLM_COST_MODEL)"),
    "api_key": Mapped("api_key", "SGLang's --api-key; with --api-key-file one of our keys"),
    "api_key_file": Mapped("api_key_file", "every route but /health*, /ready*, /metrics* "
                           "needs one of the keys (401); limits count per key name"),  # fmt: skip
    "max_input_tokens": Mapped("max_input_tokens", "400 over it: /generate, OpenAI routes, "
                               "streams (whole input after each chunk)", _unset),  # fmt: skip
    "max_streams_per_client": Mapped("max_streams_per_client", "429 over it (per key name, "
                                     "else per client IP)", _unset),  # fmt: skip
    "max_body_bytes": Mapped("max_body_bytes", "413 over it, every route", _unset),
    "stream_idle_timeout": Mapped("stream_idle_timeout", "partial streams idle this long "
                                  "are aborted (410), 0: never", lambda v: v or 0.0),  # fmt: skip
    "reader_disconnect": Mapped("reader_disconnect", "abort: a stream's result reader "
                                "leaving aborts it"),  # fmt: skip
    "shutdown_grace": Mapped("shutdown_grace", "SIGTERM: SGLang drains in-flight requests "
                             "up to S s, then its processes are killed"),  # fmt: skip
    "max_worker_restarts": Refused(_RESTARTS),
    "restart_backoff": Refused(_RESTARTS),
    "disaggregation_mode": Mapped("disaggregation_mode", "SGLang's --disaggregation-mode: "
                                  "its own prefill/decode servers (docs/disaggregation.md)"),  # fmt: skip
    "disaggregation_transfer_backend": Mapped("transfer_backend", "SGLang's "
                                              "--disaggregation-transfer-backend (zmq: ours)"),  # fmt: skip
    "disaggregation_bootstrap_port": Mapped("bootstrap_port", "SGLang's "
                                            "--disaggregation-bootstrap-port"),  # fmt: skip
    "decode_url": Mapped("decode_url", "prefill: the decode server's http://HOST:PORT, where "
                         "a stream's final chunk is decoded", refuse=_decode_url_refused),  # fmt: skip
    "bootstrap": Refused(_DISAGG),
    "disagg_ack_timeout": Refused(_DISAGG),
    "disagg_dead_after": Refused(_DISAGG),
}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def refused(args: argparse.Namespace, defaults: argparse.Namespace) -> str | None:
    """Why these options cannot run on SGLang's engine (None when they can). An
    option missing from ``OPTIONS`` is refused too when set: never silently dropped."""
    for name, value in vars(args).items():
        entry = OPTIONS.get(name)
        default = getattr(defaults, name, None)
        if entry is None and value != default:
            return f"{_flag(name)} on --engine sglang: not mapped to SGLang's engine"
        if isinstance(entry, Refused) and value != default:
            return f"{_flag(name)} on --engine sglang: {entry.why}"
        if isinstance(entry, Mapped):
            why = entry.refuse(value)
            if why:
                return why
    return None


def config_from_args(args: argparse.Namespace) -> SGLangServerConfig:
    """The ``SGLangServerConfig`` of these options (``OPTIONS``' mapped ones; SGLang's
    flags and the environment our hooks read come from it: ``launch``)."""
    fields = {e.field: e.convert(getattr(args, name)) for name, e in OPTIONS.items()
              if isinstance(e, Mapped) and hasattr(args, name)}  # fmt: skip
    return SGLangServerConfig(**fields)


def run_sglang(args: argparse.Namespace) -> int:
    server = SGLangServer(config_from_args(args))
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"stream2llm serve: starting SGLang's server (log: {server.log_path})",
              file=sys.stderr)  # fmt: skip
        try:
            server.start(progress=True)
        except SGLangStartupError as exc:
            print(f"stream2llm serve: {exc}", file=sys.stderr)
            return 1
        tree = "StreamingRadixCache" if server.uses_streaming_tree() else "NOT the streaming tree"
        print(f"stream2llm serve: SGLang ready at {server.url} after {server.startup_s:.0f} s "
              f"({tree}); Ctrl-C stops it", file=sys.stderr)  # fmt: skip
        while not stopping and server.alive():
            time.sleep(0.5)
        if not stopping:
            print(f"stream2llm serve: SGLang's server exited; log tail:\n{server.log_tail()}",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    finally:
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)
