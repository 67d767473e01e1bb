"""`stream2llm cluster`: N SGLang servers with our plugin behind SGLang's router, one URL.

    stream2llm cluster --replicas 4 [--port 30000] [-- SERVE ARGS...]

SERVE ARGS are `stream2llm serve --engine sglang` options (every replica gets them;
refused ones are refused here, by the same table). Prints the URLs, runs until
Ctrl-C / SIGTERM, then drains everything together (docs/scale-out.md).
``--disaggregation`` makes each replica a prefill/decode pair of SGLang servers
(srt_ext/engines/sglang/disagg/), the router in its PD mode.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cluster", help="N SGLang replicas behind SGLang's router (loopback)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000, help="the cluster's public URL (gateway)")
    p.add_argument("--router-port", type=int, default=0, help="SGLang's router (0: a free port)")
    p.add_argument("--disaggregation", action="store_true",
                   help="each replica a prefill/decode pair of SGLang servers (KV over ZMQ; "
                        "--disaggregation-transfer-backend after -- picks another)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP threads per SGLang process of each replica")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="SIGTERM: seconds open streams get before they are aborted")
    p.add_argument("--log-dir", default=None, help="one log file per replica and the router")
    p.add_argument("serve_args", nargs=argparse.REMAINDER,
                   help="after --: `stream2llm serve` options for every replica")
    p.set_defaults(func=run)
    return p


def server_config(serve_args: list[str], threads: int) -> Any:
    """The ``SGLangServerConfig`` every replica runs, from `serve` options (or the
    reason they cannot run on SGLang's engine, as a ``ValueError``)."""
    from srt_ext.cli.serve import add_parser as serve_parser
    from srt_ext.cli.serve import check_args
    from srt_ext.engines.sglang.serve import config_from_args

    parser = serve_parser(argparse.ArgumentParser(prog="stream2llm cluster").add_subparsers())
    args = parser.parse_args([a for a in serve_args if a != "--"])
    if args.engine != "sglang":
        raise ValueError("replicas run SGLang's engine (--engine reference has no cluster)")
    if "--threads" not in serve_args:
        args.threads = threads
    for flag in ("--host", "--port"):
        if flag in serve_args:
            raise ValueError(f"{flag} is the cluster's to choose (each replica gets a loopback port)")
    for flag in ("--disaggregation-mode", "--decode-url", "--disaggregation-bootstrap-port"):
        if any(a == flag or a.startswith(flag + "=") for a in serve_args):
            raise ValueError(f"{flag} is the cluster's to set: `stream2llm cluster --disaggregation` "
                             f"makes each replica a prefill/decode pair")  # fmt: skip
    why = check_args(args)
    if why:
        raise ValueError(why)
    return config_from_args(args)


def run(args: argparse.Namespace) -> int:
    from srt_ext.cluster.launch import Cluster, ClusterSpec, router_available
    from srt_ext.cluster.replicas import disaggregated_replica_missing

    if args.replicas < 1:
        print("stream2llm cluster: --replicas must be at least 1", file=sys.stderr)
        return 2
    if args.disaggregation:
        why = disaggregated_replica_missing()
        if why:
            print(f"stream2llm cluster: {why}", file=sys.stderr)
            return 2
    err = router_available()
    if err:
        print(f"stream2llm cluster: {err}", file=sys.stderr)
        return 2
    try:
        cfg = server_config(args.serve_args, args.threads)
    except ValueError as exc:
        print(f"stream2llm cluster: {exc}", file=sys.stderr)
        return 2
    spec = ClusterSpec(replicas=args.replicas, host=args.host, port=args.port,
                       router_port=args.router_port, server=cfg,
                       disaggregation=args.disaggregation,
                       shutdown_grace=args.shutdown_grace, log_dir=args.log_dir)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(spec)
    print(f"stream2llm cluster: starting {args.replicas} SGLang replica(s) and the router ...",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        cluster.start()
    except Exception as exc:  # noqa: BLE001  (start-up failures name the child and its log)
        print(f"stream2llm cluster: {exc}", file=sys.stderr)
        return 1
    print(f"stream2llm cluster: {cluster.url}  (stream API, /generate, OpenAI, /health)", flush=True)
    print(f"  router:   {cluster.router.url}  (sglang-router, one-shot requests)", flush=True)
    for r in cluster.replicas:
        what = ", ".join(f"{kind} {url}" for kind, url, _ in r.router_workers())
        print(f"  {r.name}: {r.url}  (SGLang with stream2llm: {what})", flush=True)
    try:
        stop.wait()
    finally:
        print("stream2llm cluster: draining ...", flush=True)
        cluster.stop()
        print("stream2llm cluster: stopped", flush=True)
    return 0
