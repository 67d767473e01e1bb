"""`stream2llm serve`: one process group (API room + worker) doing prefill and decode."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The flags; their defaults come from ``WorkerConfig``/``ServerOptions`` (one place)."""
    from srt_ext.api.options import ServerOptions
    from srt_ext.worker.config import WorkerConfig

    w, o = WorkerConfig(), ServerOptions()
    p = subparsers.add_parser("serve", help="run the REST API server (streams, /generate, OpenAI)")
    p.add_argument("--model-path", default=w.model_path,
                   help="model: smollm2-135m-instruct (default, converted once on first use), tiny-random, or a Llama-architecture HF checkpoint dir")
    p.add_argument("--engine", choices=("sglang", "reference"), default="sglang",
                   help="sglang (default): SGLang's own server, scheduler and model runner "
                        "with our tree and hooks (docs/sglang-engine.md); reference: the "
                        "retiring PyTorch engine")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--max-total-tokens", type=int, default=w.max_total_tokens, help="KV pool size in tokens")
    p.add_argument("--scheduler", default=w.policy, help="policy name (fcfs, lcas, mcps, ours, default)")
    p.add_argument("--preemption", choices=("cost", "recompute", "swap"), default=w.preemption)
    p.add_argument("--cost-model", default=w.cost_model, help="profile NAME or FILE (default cpu-reference)")
    p.add_argument("--token-budget", type=int, default=w.token_budget, help="max new tokens per step")
    p.add_argument("--api-key", default=o.api_key, help="require Authorization: Bearer KEY")
    p.add_argument("--api-key-file", default=o.api_key_file,
                   help="several keys, one 'NAME KEY' per line; per-client limits then "
                        "count per key name instead of per IP")
    p.add_argument("--device", choices=("cpu", "cuda"), default=w.device)
    p.add_argument("--threads", type=int, default=w.threads, help="torch threads in the worker (0: default)")
    p.add_argument("--worker-cpus", type=cpu_list, default=w.cpus, metavar="0,1",
                   help="CPU ids the worker (engine) process runs on (default: any); the "
                   "API room keeps the others")  # fmt: skip
    p.add_argument("--dtype", choices=("auto", "float32", "float64", "bfloat16"), default="auto",
                   help="engine dtype (auto: CPU float32 exact, GPU bf16; float64: the slower "
                   "fixed-tile exact path)")  # fmt: skip
    p.add_argument("--log-level", default="info")
    r = p.add_argument_group("reliability (docs/reliability.md)")
    r.add_argument("--stream-idle-timeout", type=float, default=o.stream_idle_timeout,
                   help="abort a stream with no chunk and no reader for S seconds (0: never)")
    r.add_argument("--reader-disconnect", choices=("keep", "abort"), default=o.reader_disconnect,
                   help="a stream's SSE reader going away: keep computing, or abort the stream")
    r.add_argument("--max-input-tokens", type=int, default=o.max_input_tokens or 0,
                   help="per-request input limit in tokens, 400 over it (0: the context length)")
    r.add_argument("--max-streams-per-client", type=int, default=o.max_streams_per_client or 0,
                   help="live streams per client IP, 429 over it (0: unlimited)")
    r.add_argument("--max-body-bytes", type=int, default=o.max_body_bytes, help="request body limit (413)")
    r.add_argument("--max-worker-restarts", type=int, default=o.max_worker_restarts,
                   help="consecutive restarts of a dead worker before giving up")
    r.add_argument("--restart-backoff", type=float, default=o.restart_backoff,
                   help="first restart delay in seconds (doubles per consecutive failure)")
    r.add_argument("--shutdown-grace", type=float, default=o.shutdown_grace,
                   help="SIGTERM: seconds in-flight requests get before they are aborted")
    from srt_ext.disagg.serve import add_disagg_args

    add_disagg_args(p)
    p.add_argument("--disaggregation-transfer-backend", default="zmq",
                   help="--engine sglang: SGLang's KV transfer backend (zmq: ours, host memory "
                        "over TCP; mooncake, nixl, ...: SGLang's RDMA ones)")  # fmt: skip
    p.add_argument("--disaggregation-bootstrap-port", type=int, default=None,
                   help="--engine sglang: the prefill server's bootstrap port (SGLang's 8998)")  # fmt: skip
    p.set_defaults(func=run)
    return p


def cpu_list(text: str) -> tuple[int, ...]:
    """``"0,2"`` -> ``(0, 2)``; every id must name a CPU of this machine."""
    try:
        cpus = tuple(sorted({int(c) for c in text.split(",") if c.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of CPU ids: {text!r}") from None
    n = os.cpu_count() or 1
    if not cpus or any(not 0 <= c < n for c in cpus):
        raise argparse.ArgumentTypeError(f"CPU ids must be in 0..{n - 1}, got {text!r}")
    return cpus


def check_args(args: argparse.Namespace) -> str | None:
    """Why these options cannot run here (None when they can)."""
    if args.engine == "sglang":
        from srt_ext.engines.sglang.serve import refused

        why = refused(args, _defaults())  # one table: engines/sglang/serve.py OPTIONS
        if why:
            return why
        if args.disaggregation_mode == "prefill" and not args.decode_url:
            return ("--disaggregation-mode prefill on --engine sglang needs --decode-url "
                    "http://HOST:PORT (the decode server that streams are handed to)")  # fmt: skip
        if args.disaggregation_mode == "decode" and args.decode_url:
            return "--decode-url is a prefill server's option"
        if args.device == "cpu":
            import importlib.util

            from srt_ext.engines.sglang.server_main import CPU_SITE

            if importlib.util.find_spec("sgl_kernel") is None and not CPU_SITE.is_dir():
                return ("--engine sglang on CPU needs stream2llm's CPU install "
                        "(bash scripts/dev.sh install: cpu_site/ with the sgl_kernel stand-in)")  # fmt: skip
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda: no CUDA device is visible"
    if args.api_key_file:
        from srt_ext.api.limits import load_api_keys

        try:
            load_api_keys(args.api_key_file)
        except (OSError, ValueError) as exc:
            return f"--api-key-file: {exc}"
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.api_key or args.api_key_file):
        logging.getLogger("stream2llm.server").warning(
            "serving on %s without --api-key: anyone who can reach it can use it", args.host
        )
    from scheduler.registry import get_policy

    try:
        get_policy(args.scheduler)
    except ValueError as exc:
        return str(exc)
    return None


def _defaults() -> argparse.Namespace:
    """What `stream2llm serve` parses with no options (each option's default)."""
    sub = argparse.ArgumentParser().add_subparsers()
    return add_parser(sub).parse_args([])


def server_options(args: argparse.Namespace) -> Any:
    """The ``ServerOptions`` these arguments ask for (also the prefill server's)."""
    from srt_ext.api.options import ServerOptions
    from srt_ext.worker.config import WorkerConfig

    worker = WorkerConfig(
        model_path=args.model_path, device=args.device, max_total_tokens=args.max_total_tokens,
        policy=args.scheduler, preemption=args.preemption, cost_model=args.cost_model,
        token_budget=args.token_budget, threads=args.threads, cpus=args.worker_cpus,
    )  # fmt: skip
    return ServerOptions(
        worker=worker, api_key=args.api_key, api_key_file=args.api_key_file,
        stream_idle_timeout=args.stream_idle_timeout,
        reader_disconnect=args.reader_disconnect, max_input_tokens=args.max_input_tokens,
        max_streams_per_client=args.max_streams_per_client, max_body_bytes=args.max_body_bytes,
        max_worker_restarts=args.max_worker_restarts, restart_backoff=args.restart_backoff,
        shutdown_grace=args.shutdown_grace,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    err = check_args(args)
    if err:
        print(f"stream2llm serve: {err}", file=sys.stderr)
        return 2
    if args.dtype != "auto":  # the worker processes build their engine from it
        os.environ["STREAM2LLM_DTYPE"] = args.dtype
    if args.engine == "sglang":
        from srt_ext.engines.sglang.serve import run_sglang

        return run_sglang(args)
    if args.disaggregation_mode != "null":
        from srt_ext.disagg.serve import run_disagg

        return run_disagg(args)
    import uvicorn

    from srt_ext.api.lifecycle import GracefulServer
    from srt_ext.api.server import create_app

    opts = server_options(args)
    app = create_app(opts)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5)  # fmt: skip
    GracefulServer(config, app.state, opts.shutdown_grace).run()
    return 0
