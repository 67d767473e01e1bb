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


def config_from_args(args: argparse.Namespace) -> SGLangServerConfig:
    """Map the ``serve`` options onto SGLang's server flags."""
    return SGLangServerConfig(
        model_path=args.model_path, host=args.host, port=args.port, device=args.device,
        max_total_tokens=args.max_total_tokens, chunked_prefill_size=args.token_budget,
        policy=args.scheduler, api_key=args.api_key, log_level=args.log_level,
        threads=args.threads,
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
