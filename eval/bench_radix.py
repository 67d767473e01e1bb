"""Benchmark: streaming tree operations vs SGLang's plain RadixCache.

For each cached-tree size (1K / 10K / 100K tokens, made of 1K-token requests
sharing a 128-token template) it measures operations per second of:

* append   ours: ``reserve`` + ``commit`` of a 64-token chunk (extends the leaf);
           SGLang: ``insert`` of the whole input so far (what a non-streaming
           cache does with a grown prompt: re-walk it from the root).
* update   ours: ``truncate`` to an LCP 64 tokens back, recompute 64 tokens;
           SGLang: ``match_prefix`` + ``insert`` of the new version (the stale
           branch stays until LRU finds it).
* match    ours: ``reuse_prefix`` of a cached 1K-token input by a new stream;
           SGLang: ``match_prefix`` of the same input.
* evict    both: free 64 tokens of unlocked cache (the same SGLang method).

Inputs are prepared the same way for both sides and *outside* the timed region:
each op's token ids (ours: the 64-token chunk or the new version as a list, what the
scheduler holds; SGLang: the ``RadixKey`` array and value tensor of the whole input)
are built before a batch of ops is timed, so only cache work is measured.

Run: ``stream2llm bench-radix [--sizes 1000,10000,100000] [--json OUT] [--plot PNG]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array
from collections.abc import Callable
from typing import Any

import radix_stream._sglang  # noqa: F401  (makes sglang importable)

import orjson
import torch
from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixKey

from radix_stream import StreamKVCache
from radix_stream.tree import RadixCache

REQ = 1024
CHUNK = 64
TEMPLATE = list(range(1, 129))


def _req(i: int) -> list[int]:
    return TEMPLATE + [1000 + i * REQ + j for j in range(REQ - len(TEMPLATE))]


def _rate(fn: Callable[[int], Any], min_ops: int = 50, min_s: float = 0.3) -> float:
    n, start = 0, time.perf_counter()
    while n < min_ops or time.perf_counter() - start < min_s:
        fn(n)
        n += 1
    return n / (time.perf_counter() - start)


def _rate_batches(
    make: Callable[[int], list[Any]], fn: Callable[[Any], Any], min_ops: int = 50,
    min_s: float = 0.3,
) -> float:
    """ops/s of ``fn`` over inputs from ``make(batch)``; building the inputs (and any
    reset between batches, done by ``make``) is not timed."""
    n, spent, b = 0, 0.0, 0
    while n < min_ops or spent < min_s:
        inputs = make(b)
        b += 1
        start = time.perf_counter()
        for x in inputs:
            fn(x)
        spent += time.perf_counter() - start
        n += len(inputs)
    return n / spent


_CYCLE = 16 * REQ // CHUNK  # appends per batch: a stream grows to 16K tokens, then restarts


def _ours(cached: int) -> dict[str, float]:
    kv = StreamKVCache.create(cached + 64 * REQ)
    for i in range(max(1, cached // REQ)):
        rid = f"c{i}"
        kv.open(rid)
        ids = _req(i)
        kv.reuse_prefix(rid, ids)
        kv.reserve(rid, len(ids) - kv.computed(rid))
        kv.commit(rid, ids[kv.computed(rid) :])
        kv.close(rid)
    out: dict[str, float] = {}

    def app_batch(b: int) -> list[list[int]]:
        if b:
            kv.close("app", keep_cache=False)
        kv.open("app")
        first = 10**8 + b * _CYCLE * CHUNK
        return [list(range(first + k * CHUNK, first + (k + 1) * CHUNK)) for k in range(_CYCLE)]

    def append(chunk: list[int]) -> None:
        kv.reserve("app", CHUNK)
        kv.commit("app", chunk)

    out["append"] = _rate_batches(app_batch, append)
    kv.close("app", keep_cache=False)

    kv.open("upd")
    base = _req(10**5)
    kv.reserve("upd", len(base))
    kv.commit("upd", base)

    def upd_batch(b: int) -> list[list[int]]:
        return [base[:-CHUNK] + [10**9 + (b * 64 + k) * CHUNK + j for j in range(CHUNK)]
                for k in range(64)]

    def update(new: list[int]) -> None:
        kv.truncate("upd", new)
        kv.reserve("upd", CHUNK)
        kv.commit("upd", new[-CHUNK:])

    out["update"] = _rate_batches(upd_batch, update)
    kv.close("upd", keep_cache=False)

    target = _req(0)

    def match(n: int) -> None:
        rid = f"m{n}"
        kv.open(rid)
        kv.reuse_prefix(rid, target)
        kv.close(rid)

    out["match"] = _rate(match)
    out["evict"] = _evict_rate(kv.tree)
    return out


def _sglang(cached: int) -> dict[str, float]:
    tree = RadixCache.create_simulated()

    def insert(ids: list[int]) -> None:
        tree.insert(InsertParams(key=RadixKey(array("q", ids)), value=torch.tensor(ids)))

    for i in range(max(1, cached // REQ)):
        insert(_req(i))
    out: dict[str, float] = {}
    Prepared = tuple[RadixKey, torch.Tensor]

    def prepare(ids: list[int]) -> Prepared:
        return RadixKey(array("q", ids)), torch.tensor(ids)

    def app_batch(b: int) -> list[Prepared]:  # the grown input after each of _CYCLE chunks
        first = 10**8 + b * _CYCLE * CHUNK
        return [prepare(list(range(first, first + (k + 1) * CHUNK))) for k in range(_CYCLE)]

    def append(x: Prepared) -> None:
        tree.insert(InsertParams(key=x[0], value=x[1]))

    out["append"] = _rate_batches(app_batch, append)
    base = _req(10**5)
    insert(base)

    def upd_batch(b: int) -> list[Prepared]:
        return [prepare(base[:-CHUNK] + [10**9 + (b * 64 + k) * CHUNK + j for j in range(CHUNK)])
                for k in range(64)]

    def update(x: Prepared) -> None:
        tree.match_prefix(MatchPrefixParams(key=x[0]))
        tree.insert(InsertParams(key=x[0], value=x[1]))

    out["update"] = _rate_batches(upd_batch, update)
    target = array("q", _req(0))

    def match(_: int) -> None:  # a request's lookup: match, lock, and later unlock
        node = tree.match_prefix(MatchPrefixParams(key=RadixKey(target))).last_device_node
        tree.inc_lock_ref(node)
        tree.dec_lock_ref(node)

    out["match"] = _rate(match)
    out["evict"] = _evict_rate(tree)
    return out


def update_vs_length(length: int) -> tuple[float, float]:
    """ops/s of one update (64 tokens past the LCP) of an input of ``length``.

    The two alternating versions are built once, outside the timed region, as
    arrays (what the scheduler holds), so only the cache operation is timed.
    """
    base = list(range(1, length - CHUNK + 1))
    versions = [array("q", base + [10**9 + v * CHUNK + j for j in range(CHUNK)]) for v in (0, 1)]
    kv = StreamKVCache.create(4 * length)
    kv.open("u")
    kv.reserve("u", length)
    kv.commit("u", versions[1])

    def ours(n: int) -> None:
        new = versions[n % 2]
        kv.truncate("u", new)
        kv.reserve("u", CHUNK)
        kv.commit("u", new[-CHUNK:])

    tree = RadixCache.create_simulated()
    values = [torch.tensor(v) for v in versions]

    def sglang(n: int) -> None:
        key = RadixKey(versions[n % 2])
        tree.match_prefix(MatchPrefixParams(key=key))
        tree.insert(InsertParams(key=key, value=values[n % 2]))

    return _rate(ours), _rate(sglang)


def _evict_rate(tree: Any) -> float:
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    if tree.token_to_kv_pool_allocator is None:  # create_simulated has no allocator
        tree.token_to_kv_pool_allocator = _NullAllocator()
    start, n = time.perf_counter(), 0
    while tree.evictable_size() > CHUNK and n < 200:
        tree.evict(EvictParams(num_tokens=CHUNK))
        n += 1
    return n / (time.perf_counter() - start) if n else float("nan")


class _NullAllocator:
    def free_segment(self, index: torch.Tensor, *, start_pos: int) -> None:
        return None


def run(args: argparse.Namespace) -> int:
    # Tree and allocator ops are small tensor ops: intra-op threads only add
    # synchronisation (and collapse under a loaded machine).
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    reps = max(1, args.repeat)
    for size in sizes:  # median of the repeats per cell (the dev box is shared and noisy)
        runs = [(_ours(size), _sglang(size)) for _ in range(reps)]
        ours = {op: statistics.median(r[0][op] for r in runs) for op in runs[0][0]}
        theirs = {op: statistics.median(r[1][op] for r in runs) for op in runs[0][1]}
        for op in ("append", "update", "match", "evict"):
            rows.append(
                {"cached_tokens": size, "op": op, "ours_ops_s": ours[op],
                 "sglang_ops_s": theirs[op], "ratio": ours[op] / theirs[op]}
            )
    print(f"{'cached':>8} {'op':>7} {'stream2llm op/s':>16} {'SGLang op/s':>12} {'ours/SGLang':>12}")
    for r in rows:
        print(f"{r['cached_tokens']:>8} {r['op']:>7} {r['ours_ops_s']:>16,.0f} "
              f"{r['sglang_ops_s']:>12,.0f} {r['ratio']:>12.2f}")
    lengths = []
    print(f"\n{'input':>8} {'update ours op/s':>17} {'SGLang op/s':>12} {'ours/SGLang':>12}")
    for length in (1024, 8192, 32768):
        pairs = [update_vs_length(length) for _ in range(reps)]
        ours_u = statistics.median(p[0] for p in pairs)
        sg_u = statistics.median(p[1] for p in pairs)
        lengths.append({"input_tokens": length, "ours_ops_s": ours_u, "sglang_ops_s": sg_u})
        print(f"{length:>8} {ours_u:>17,.0f} {sg_u:>12,.0f} {ours_u / sg_u:>12.2f}")
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps({"chunk_tokens": CHUNK, "request_tokens": REQ, "rows": rows,
                                  "update_vs_length": lengths},
                                 option=orjson.OPT_INDENT_2))
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = ["append", "update", "match", "evict"]
    sizes = sorted({r["cached_tokens"] for r in rows})
    fig, axes = plt.subplots(1, len(ops), figsize=(4 * len(ops), 3.2))
    for ax, op in zip(axes, ops, strict=True):
        sel = [r for r in rows if r["op"] == op]
        ax.plot(sizes, [r["ours_ops_s"] for r in sel], "o-", label="stream2llm")
        ax.plot(sizes, [r["sglang_ops_s"] for r in sel], "s--", label="SGLang RadixCache")
        ax.set(xscale="log", yscale="log", title=op, xlabel="cached tokens", ylabel="ops/s")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench-radix", help="streaming tree ops/s vs SGLang's RadixCache")
    p.add_argument("--sizes", default="1000,10000,100000", help="cached tokens, comma separated")
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--plot", help="draw ops/s per size to this PNG")
    p.add_argument("--repeat", type=int, default=3,
                   help="measure every cell this many times and report the median")
    p.set_defaults(func=run)
