"""Prefill/decode disaggregation on SGLang's engine: what it costs on this machine.

``python -m eval.bench_pd transfer``: our ZMQ transfer engine between two
processes (the decode side in a child process, as in a real pair) against a
memory-copy bound (``torch.clone`` of the same bytes, and ``index_select`` for
scattered pages), for a contiguous run and for per-token pages.

``python -m eval.bench_pd ttft``: TTFT after the final chunk of a stream whose
first part was prefilled and parked, co-located (one SGLang server) vs
disaggregated (a prefill/decode pair, the KV moved by the ZMQ backend at the
final chunk). Starts the servers itself (tiny random model unless --model-path),
or uses ``--colocated URL`` / ``--prefill URL`` when given.

Figures and commands: docs/disaggregation.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any


# ---- transfer -----------------------------------------------------------------------
def _receiver(nbytes: int, conn: Any) -> None:
    import torch

    from srt_ext.engines.sglang.disagg.zmq_engine import ZmqTransferEngine

    buf = torch.zeros(nbytes, dtype=torch.uint8)
    eng = ZmqTransferEngine("127.0.0.1")
    eng.batch_register([buf.data_ptr()], [nbytes])
    conn.send((eng.session_id, buf.data_ptr()))
    conn.recv()  # done
    conn.send(int(buf[: min(nbytes, 1 << 20)].sum()))


def bench_transfer(mib: int, block_bytes: int, reps: int) -> dict[str, Any]:
    import torch

    from srt_ext.engines.sglang.disagg.zmq_engine import ZmqTransferEngine

    nbytes = mib << 20
    if block_bytes < nbytes:
        nbytes -= nbytes % block_bytes  # whole blocks
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(nbytes, child), daemon=True)
    proc.start()
    session, dst_base = parent.recv()
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    eng = ZmqTransferEngine("127.0.0.1")
    eng.batch_register([src.data_ptr()], [nbytes])
    n_blocks = nbytes // block_bytes
    # scattered blocks: every other block, shuffled destinations (what page-size-1
    # KV with non-contiguous slots looks like to the engine)
    perm = torch.randperm(n_blocks).tolist()
    srcs = [src.data_ptr() + i * block_bytes for i in range(n_blocks)]
    dsts = [dst_base + perm[i] * block_bytes for i in range(n_blocks)]
    lens = [block_bytes] * n_blocks
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if block_bytes >= nbytes:
            rc = eng.batch_transfer_sync(session, [src.data_ptr()], [dst_base], [nbytes])
        else:
            rc = eng.batch_transfer_sync(session, srcs, dsts, lens)
        times.append(time.perf_counter() - t0)
        assert rc == 0, rc
    parent.send("done")
    parent.recv()
    proc.join(10)
    clone = []
    for _ in range(reps):
        t0 = time.perf_counter()
        src.clone()
        clone.append(time.perf_counter() - t0)
    copy, dst = [], torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        copy.append(time.perf_counter() - t0)
    gather = []
    if block_bytes < nbytes:
        view = src.view(n_blocks, block_bytes)
        idx = torch.tensor(perm)
        for _ in range(reps):
            t0 = time.perf_counter()
            view.index_select(0, idx)
            gather.append(time.perf_counter() - t0)
    med = statistics.median
    out = {"bytes": nbytes, "block_bytes": min(block_bytes, nbytes), "blocks": max(1, n_blocks)
           if block_bytes < nbytes else 1,
           "zmq_GBps": nbytes / med(times) / 1e9, "clone_GBps": nbytes / med(clone) / 1e9,
           "copy_GBps": nbytes / med(copy) / 1e9}  # fmt: skip
    if gather:
        out["index_select_GBps"] = nbytes / med(gather) / 1e9
    out["zmq_vs_clone"] = out["zmq_GBps"] / out["clone_GBps"]
    out["zmq_vs_copy"] = out["zmq_GBps"] / out["copy_GBps"]
    return out


# ---- TTFT ---------------------------------------------------------------------------
def _ttft(url: str, ids: list[int], head: int, sp: dict[str, Any]) -> float:
    import httpx

    from srt_ext.client.rest import Client

    for _ in range(200):
        if httpx.post(url + "/flush_cache", timeout=30).status_code == 200:
            break
        time.sleep(0.1)
    with Client(url) as c:
        rid = c.open_stream(sampling_params=sp, input_ids=ids[:head])
        deadline = time.monotonic() + 120
        while c.stats()["kv_pinned_tokens"] < head:
            if time.monotonic() > deadline:
                raise RuntimeError("the partial prefill did not finish")
            time.sleep(0.02)
        c.send_chunk(rid, input_ids=ids[head:], final=True)
        out = c.result(rid)
    return float(out["meta_info"]["ttft_s"])


def bench_ttft(args: argparse.Namespace) -> dict[str, Any]:
    import random

    from srt_ext.engines.sglang.disagg.launch import PDConfig, PDPair
    from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

    base = SGLangServerConfig(model_path=args.model_path, max_total_tokens=args.pool, threads=1,
                              chunked_prefill_size=args.chunk, startup_timeout=900)  # fmt: skip
    started: list[Any] = []
    try:
        colo = args.colocated
        if colo is None:
            s = SGLangServer(base).start(progress=False)
            started.append(s)
            colo = s.url
        pre = args.prefill
        if pre is None:
            pair = PDPair(PDConfig(server=base)).start(progress=False)
            started.append(pair)
            pre = pair.prefill.url
        rng = random.Random(0)
        sp = {"max_new_tokens": args.new_tokens, "temperature": 0.0}
        rows = []
        for n in args.lengths:
            ids = [rng.randrange(1000, 30000) for _ in range(n)]
            head = n - args.tail
            colo_t = [_ttft(colo, ids, head, sp) for _ in range(args.reps)]
            pd_t = [_ttft(pre, ids, head, sp) for _ in range(args.reps)]
            rows.append({"tokens": n, "final_chunk_tokens": args.tail,
                         "colocated_ttft_ms": 1000 * statistics.median(colo_t),
                         "pd_ttft_ms": 1000 * statistics.median(pd_t)})  # fmt: skip
        return {"model": args.model_path, "rows": rows}
    finally:
        for s in reversed(started):
            s.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench_pd", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("transfer")
    t.add_argument("--mib", type=int, default=64)
    t.add_argument("--block-bytes", type=int, nargs="+", default=[1 << 30, 65536, 768])
    t.add_argument("--reps", type=int, default=5)
    f = sub.add_parser("ttft")
    f.add_argument("--model-path", default="tiny-random")
    f.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    f.add_argument("--tail", type=int, default=16, help="tokens in the final chunk")
    f.add_argument("--new-tokens", type=int, default=4)
    f.add_argument("--reps", type=int, default=3)
    f.add_argument("--pool", type=int, default=8192)
    f.add_argument("--chunk", type=int, default=512)
    f.add_argument("--colocated", default=None, help="a running co-located server's URL")
    f.add_argument("--prefill", default=None, help="a running PD prefill server's URL")
    a = p.parse_args(argv)
    if a.what == "transfer":
        for b in a.block_bytes:
            print(json.dumps(bench_transfer(a.mib, b, a.reps)), flush=True)
    else:
        print(json.dumps(bench_ttft(a), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
