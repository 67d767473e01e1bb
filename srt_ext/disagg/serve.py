"""Running disaggregated servers: ``--disaggregation-mode prefill|decode``.

* decode: ``run_decode_server`` binds ``--bootstrap`` (a ZMQ endpoint, like
  SGLang's bootstrap port) and decodes whatever prefill servers send; it has no
  HTTP API of its own (clients never talk to it).
* prefill: the ordinary REST server whose worker process runs
  ``PrefillWorkerCore`` (hand-off to ``--decode-url``) instead of ``WorkerCore``,
  through ``create_app(opts, start_proc=...)``: the one public API.

``launch_disaggregated`` starts both on loopback for tests (decode in a thread
of the caller, prefill as the usual uvicorn thread + worker process).
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec


def add_disagg_args(p: argparse.ArgumentParser) -> None:
    """The options `stream2llm serve` needs for disaggregation (see module doc)."""
    p.add_argument("--disaggregation-mode", choices=("null", "prefill", "decode"), default="null")
    p.add_argument("--decode-url", default=None,
                   help="prefill mode: the decode server's ZMQ endpoint (tcp://HOST:PORT)")  # fmt: skip
    p.add_argument("--bootstrap", default="tcp://127.0.0.1:30100",
                   help="decode mode: ZMQ endpoint to bind for prefill servers")  # fmt: skip
    p.add_argument("--disagg-ack-timeout", type=float, default=30.0)
    p.add_argument("--disagg-dead-after", type=float, default=10.0)


def prefill_worker_main(cfg_bytes: bytes, decode_addr: str, ack_s: float, dead_s: float) -> None:
    """Worker process entry for a prefill server: build_core's engine, our core."""
    from srt_ext.disagg.prefill import PrefillWorkerCore
    from srt_ext.worker.config import WorkerConfig
    from srt_ext.worker.process import build_engine, serve

    cfg = msgspec.msgpack.decode(cfg_bytes, type=WorkerConfig)
    core = PrefillWorkerCore(build_engine(cfg), decode_addr, cfg,
                             ack_timeout_s=ack_s, dead_after_s=dead_s)  # fmt: skip
    try:
        serve(cfg, core)
    finally:
        core.close()


def create_prefill_app(
    opts: Any, decode_addr: str, ack_s: float = 30.0, dead_s: float = 10.0
) -> Any:
    """The prefill server's FastAPI app (``opts``: srt_ext.api.server.ServerOptions)."""
    from srt_ext.api.server import create_app, resolve_model_path

    model_path = resolve_model_path(opts.worker.model_path)

    def start_proc(in_addr: str, out_addr: str) -> Any:
        cfg = opts.worker_config(in_addr, out_addr, model_path)
        ctx = multiprocessing.get_context(opts.start_method)
        if opts.start_method == "forkserver":
            ctx.set_forkserver_preload(["srt_ext.worker.preload"])
        proc = ctx.Process(target=prefill_worker_main, name="stream2llm-prefill-worker",
                           args=(msgspec.msgpack.encode(cfg), decode_addr, ack_s, dead_s),
                           daemon=True)  # fmt: skip
        proc.start()
        return proc

    return create_app(opts, start_proc=start_proc)


def start_decode(model_path: str | None, bootstrap: str, device: str = "cpu",
                 max_total_tokens: int = 16384) -> Any:  # fmt: skip
    """A DecodeWorker bound at ``bootstrap`` (in this process, on its own threads)."""
    import radix_stream  # noqa: F401
    from srt_ext.disagg.decode import DecodeWorker
    from srt_ext.engines.reference.engine import ReferenceEngine

    engine = ReferenceEngine(model_path, device=device, kv_capacity_tokens=max_total_tokens)
    return DecodeWorker(engine, bootstrap)


def run_decode_server(args: argparse.Namespace) -> int:
    """Foreground decode server until SIGINT/SIGTERM."""
    worker = start_decode(args.model_path, args.bootstrap, args.device, args.max_total_tokens)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"stream2llm decode server: ZMQ {worker.endpoint}", flush=True)
    try:
        while not stop.wait(5.0):
            pass
    finally:
        worker.close()
    return 0


def run_disagg(args: argparse.Namespace) -> int:
    """What `stream2llm serve` runs when ``--disaggregation-mode`` is not ``null``."""
    if args.disaggregation_mode == "decode":
        return run_decode_server(args)
    if not args.decode_url:
        raise SystemExit("stream2llm serve: --disaggregation-mode prefill needs --decode-url")
    import uvicorn

    from srt_ext.api.lifecycle import GracefulServer
    from srt_ext.cli.serve import server_options

    # the prefill server is the pair's public API: same options and the same SIGTERM
    # drain as a plain server (new work 503, open streams finish, then exit 0)
    opts = server_options(args)
    app = create_prefill_app(opts, args.decode_url, args.disagg_ack_timeout, args.disagg_dead_after)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5)  # fmt: skip
    GracefulServer(config, app.state, opts.shutdown_grace).run()
    return 0


@contextmanager
def launch_disaggregated(decode_tokens: int = 16384, dead_after_s: float = 10.0,
                         **opts: Any) -> Iterator[tuple[Any, Any]]:  # fmt: skip
    """(prefill ServerHandle, DecodeWorker) on loopback; both stopped on exit."""
    import uvicorn

    from srt_ext.api.options import ServerOptions
    from srt_ext.launch import ServerHandle, _free_socket, _wait_healthy

    o = ServerOptions.from_flags(**opts)
    dec = start_decode(o.worker.model_path, "tcp://127.0.0.1:*", o.worker.device, decode_tokens)
    sock = _free_socket("127.0.0.1")
    app = create_prefill_app(o, dec.endpoint, dead_s=dead_after_s)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))  # fmt: skip
    # no signal handlers to disable: uvicorn installs them only on the main thread
    # (Server.capture_signals) and this server runs on its own thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    h = ServerHandle(f"http://127.0.0.1:{sock.getsockname()[1]}", o.api_key, server=server,
                     thread=thread)  # fmt: skip
    try:
        _wait_healthy(h, o.ready_timeout)
        yield h, dec
    finally:
        h.stop()
        time.sleep(0.1)
        dec.close()
