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
from typing import Any

from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig, SGLangStartupError

# `serve` options SGLang's engine cannot honour yet: refused unless left at their
# default (value -> why), never silently dropped
REFUSED: dict[str, str] = {
    "api_key_file": "several keys (per-key limits) are not enforced on SGLang's server yet; "
                    "use --api-key, or --engine reference",
    "max_streams_per_client": "per-client stream limits are not enforced on SGLang's server yet",
    "max_input_tokens": "use SGLang's context length (--max-total-tokens bounds the input)",
    "worker_cpus": "SGLang's processes are not pinned to CPUs yet",
    "reader_disconnect": "a result reader leaving never aborts a stream on SGLang's server yet",
    "max_body_bytes": "SGLang's server has no body-size limit of ours yet",
    "max_worker_restarts": "SGLang's scheduler is not restarted by us (reference worker option)",
    "restart_backoff": "SGLang's scheduler is not restarted by us (reference worker option)",
    "shutdown_grace": "SGLang's server stops at once on SIGTERM (no drain yet)",
}
DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16"}  # SGLang --dtype


def refused(args: argparse.Namespace, defaults: argparse.Namespace) -> str | None:
    """Why these options cannot run on SGLang's engine (None when they can)."""
    for name, why in REFUSED.items():
        if getattr(args, name, None) != getattr(defaults, name, None):
            return f"--{name.replace('_', '-')} on --engine sglang: {why}"
    if args.dtype not in DTYPES:
        return f"--dtype {args.dtype} on --engine sglang: SGLang serves auto, float32, bfloat16"
    return None


def config_from_args(args: argparse.Namespace) -> SGLangServerConfig:
    """Map the ``serve`` options onto SGLang's server flags and the environment our
    hooks read in SGLang's processes (the ones ``refused`` lets through)."""
    env = {"STREAM2LLM_PREEMPTION": args.preemption,
           "STREAM2LLM_STREAM_IDLE_TIMEOUT": f"{args.stream_idle_timeout or 0:g}"}  # fmt: skip
    if args.cost_model:
        env["STREAM2LLM_COST_MODEL"] = args.cost_model
    dtype = DTYPES.get(args.dtype)
    return SGLangServerConfig(
        model_path=args.model_path, host=args.host, port=args.port, device=args.device,
        max_total_tokens=args.max_total_tokens, chunked_prefill_size=args.token_budget,
        policy=args.scheduler, api_key=args.api_key, log_level=args.log_level,
        threads=args.threads, env=env, extra_args=["--dtype", dtype] if dtype else [],
    )  # fmt: skip


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
