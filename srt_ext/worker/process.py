"""The worker process: scheduler + engine, talking to the API room over ZMQ.

Why a separate process: the engine step holds the GIL (and the CPU) for tens of
milliseconds to seconds; in its own process it never stalls HTTP handling, and
chunks that arrive during a step simply queue in the socket. They are applied
after the step is committed, which is exactly the scheduler's snapshot rule: a
final chunk that lands mid-step cannot make a token appear early.

Loop: drain the PULL socket (apply every request, reply at once) -> one
scheduler step -> push the step's events. When there is no work the loop blocks
in ``poll`` (no busy spin); when there is work but nothing could be planned
(memory momentarily stuck) it waits a few milliseconds before trying again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from typing import Any

import msgspec

from srt_ext.worker.config import WorkerConfig

log = logging.getLogger("stream2llm.worker")


def build_engine(cfg: WorkerConfig) -> Any:
    """The engine ``cfg`` asks for (imports torch/sglang: slow, once)."""
    import torch

    import radix_stream  # noqa: F401  (must precede any sglang import)
    from srt_ext.engines.reference.engine import ReferenceEngine

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return ReferenceEngine(cfg.model_path, device=cfg.device,
                           kv_capacity_tokens=cfg.max_total_tokens, warm=True)  # fmt: skip


def build_core(cfg: WorkerConfig) -> Any:
    """The engine and the scheduler around it."""
    from srt_ext.worker.core import WorkerCore

    return WorkerCore(build_engine(cfg), cfg)


def _parent_alive() -> bool:
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


def serve(cfg: WorkerConfig, core: Any = None) -> None:
    """Run the loop until ``Shutdown`` or the parent process dies."""
    import zmq

    from srt_ext import messages as m

    core = core or build_core(cfg)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(cfg.in_addr)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(cfg.out_addr)
    push.send(m.encode(m.Pong(0, time.time())))  # "ready": the engine is loaded
    running, stuck = True, False
    last_check = time.monotonic()
    try:
        while running:
            busy = core.has_work()
            timeout = (cfg.stuck_wait_ms if stuck else 0) if busy else cfg.poll_ms
            while pull.poll(timeout):
                timeout = 0
                try:
                    msg = m.decode_to_worker(pull.recv())
                except m.MessageError as exc:
                    log.warning("dropped an invalid message: %s", exc)
                    continue
                if isinstance(msg, m.Shutdown):
                    running = False
                    break
                reply, events = core.handle(msg)
                if reply is not None:
                    push.send(m.encode(reply))
                if events:
                    push.send(m.encode(m.EventBatch(events)))
            if not running:
                break
            if core.has_work():
                n, events = core.step()
                stuck = n == 0
                if events:
                    push.send(m.encode(m.EventBatch(events)))
            if time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                if not _parent_alive():
                    log.warning("parent process is gone; worker exits")
                    break
    finally:
        pull.close(0)
        push.close()
        ctx.term()


def worker_main(cfg_bytes: bytes) -> None:
    """Process entry point (multiprocessing target): decode the config and serve."""
    logging.basicConfig(level=os.environ.get("STREAM2LLM_LOG", "WARNING"))
    cfg = msgspec.msgpack.decode(cfg_bytes, type=WorkerConfig)
    if cfg.cpus:  # before torch starts its threads, so they all inherit it
        os.sched_setaffinity(0, set(cfg.cpus))
    serve(cfg)


def start_worker(cfg: WorkerConfig, method: str = "forkserver") -> multiprocessing.process.BaseProcess:
    """Start the worker in a child process.

    ``forkserver`` (default): children fork from a clean server process that has
    already imported torch/sglang/the engine, so the first worker pays the
    imports once and later ones (tests start several servers) start in well
    under a second, without forking a parent that runs threads.
    """
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["srt_ext.worker.preload"])
    # typeshed declares Process only on the concrete contexts, not on the BaseContext
    # that get_context(str) returns; every context get_context() hands out has it
    proc = ctx.Process(target=worker_main, args=(msgspec.msgpack.encode(cfg),),  # type: ignore[attr-defined]
                       name="stream2llm-worker", daemon=True)  # fmt: skip
    proc.start()
    return proc
