"""`stream2llm cluster`: N replicas behind SGLang's router, one public URL.

    stream2llm cluster --replicas 4 [--disaggregation] [--port 30000] [-- SERVE ARGS...]

Prints the URLs, runs until Ctrl-C / SIGTERM, then drains everything together
(docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cluster", help="N serve replicas behind SGLang's router (loopback)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000, help="the cluster's public URL (gateway)")
    p.add_argument("--router-port", type=int, default=0, help="SGLang's router (0: a free port)")
    p.add_argument("--disaggregation", action="store_true",
                   help="each replica is a prefill server with its own decode server")
    p.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="SIGTERM: seconds open streams get before they are aborted")
    p.add_argument("--log-dir", default=None, help="one log file per child (default: stderr)")
    p.add_argument("serve_args", nargs=argparse.REMAINDER,
                   help="after --: options for every `stream2llm serve` replica")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from srt_ext.cluster.launch import Cluster, ClusterSpec, router_available

    if args.replicas < 1:
        print("stream2llm cluster: --replicas must be at least 1", file=sys.stderr)
        return 2
    err = router_available()
    if err:
        print(f"stream2llm cluster: {err}", file=sys.stderr)
        return 2
    extra = [a for a in args.serve_args if a != "--"]
    spec = ClusterSpec(replicas=args.replicas, host=args.host, port=args.port,
                       router_port=args.router_port, serve_args=extra,
                       disaggregation=args.disaggregation, threads=args.threads,
                       shutdown_grace=args.shutdown_grace, log_dir=args.log_dir)  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(spec)
    try:
        cluster.start()
    except RuntimeError as exc:
        print(f"stream2llm cluster: {exc}", file=sys.stderr)
        return 1
    print(f"stream2llm cluster: {cluster.url}  (stream API, /generate, OpenAI, /health)", flush=True)
    print(f"  router:   {cluster.router.url}  (sglang-router, policy manual/min_load)", flush=True)
    for i, u in enumerate(cluster.replica_urls):
        print(f"  replica{i}: {u}", flush=True)
    try:
        stop.wait()
    finally:
        print("stream2llm cluster: draining ...", flush=True)
        cluster.stop()
        print("stream2llm cluster: stopped", flush=True)
    return 0
