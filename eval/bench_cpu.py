"""CPU throughput of the reference engine against this machine's limits (issue 9).

    stream2llm bench-cpu [--model-path DIR] [--threads 1] [--plot out/bench_cpu.png]
    python -m eval.bench_cpu ...            (the same)

In one run, at one torch thread count: the machine's dense-matmul rate (torch
GEMM, float32 and float64: MKL ``F.linear`` and oneDNN packed, best over the
model's GEMM shapes and a square one) and its memory read bandwidth (``sum`` of
a 512 MiB tensor); then for each exact path (float64 position tiles = before,
float32 sized tiles = after) prefill of 256/1K/2K-token chunks from an empty
cache and decode steps at batch 1 and 8. Bounds:

* prefill FLOPs = 2 x (decoder matmul params) x tokens + 2 x (LM-head params)
  (one sampled row) + causal attention 4 x heads x head_dim x layers x n(n+1)/2;
  time bound = FLOPs / float32 GEMM rate. Target: >= 50 % for 1K chunks.
* decode read bound = (weight bytes + KV bytes of the batch) / bandwidth.
  Target: step time <= 2 x the bound, float32 weights.

Times are taken on both clocks; fractions use this process's CPU time (one
thread: what the run would take alone, short of the cache misses other jobs
cause), the bounds too (GEMM and bandwidth measured the same way), so a shared
machine skews them little. Wall times are printed next to them.

Default model: a seeded random checkpoint with SmolLM2-135M's exact shape
(timings depend on shapes only). Ratios within one run are the robust numbers
on a shared machine; absolute ones move with the load.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from srt_ext.engines.reference.shapes import SMOLLM2_135M, matmul_params, write_random_llama

GEMM_SHAPES = [(m, k, n) for m in (64, 256) for k, n in ((576, 3072), (1536, 576), (576, 960))]


@dataclass
class Machine:
    threads: int
    gflops_fp32: float
    gflops_fp64: float
    read_gbps: float


@dataclass
class Row:
    path: str  # "float64 (before)" / "float32 (after)"
    kind: str  # prefill / decode
    size: int  # chunk tokens / batch
    seconds: float  # wall seconds per chunk / per step
    cpu_s: float  # this process's CPU seconds for the same
    bound_s: float  # FLOP bound (prefill, float32 GEMM rate) or read bound (decode)
    bound32_s: float  # decode: the read bound with float32 weights (the target's)

    @property
    def frac(self) -> float:
        """Share of the bound reached, on CPU time (robust to a shared machine)."""
        return self.bound_s / self.cpu_s


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time is what a single-threaded run
    would take on an idle machine, less the cache misses other jobs cause."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    fn()
    runs = [timed(fn) for _ in range(repeats)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def gemm_rate(dtype: torch.dtype, repeats: int = 3) -> float:
    """Best GFLOP/s of x @ W.T over the model's shapes and a 1024^3 one."""
    from srt_ext.engines.reference.dense import Linear, PackedLinear, onednn_packing_available

    packed = onednn_packing_available(torch.device("cpu"), dtype)
    best = 0.0
    for m, k, n in [*GEMM_SHAPES, (1024, 1024, 1024)]:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        kernels: list[Callable[[torch.Tensor], torch.Tensor]] = [Linear(w)]
        if packed:
            kernels.append(PackedLinear.pack(w, None))
        for kernel in kernels:
            cpu = best_of(partial(kernel, x), repeats)[1]
            best = max(best, 2 * m * k * n / cpu / 1e9)
    return best


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    x = torch.ones(mib * 2**20 // 4)
    return x.numel() * 4 / best_of(lambda: x.sum(), repeats)[1] / 1e9


def prefill_flops(shape: dict[str, Any], n: int) -> float:
    layers_p, lm_p = matmul_params(shape)
    attn = 4 * shape["num_attention_heads"] * shape["head_dim"] * shape["num_hidden_layers"]
    return 2.0 * layers_p * n + 2.0 * lm_p + attn * n * (n + 1) / 2


def decode_bytes(shape: dict[str, Any], batch: int, context: int, itemsize: int) -> float:
    layers_p, lm_p = matmul_params(shape)
    kv = 2 * shape["num_key_value_heads"] * shape["head_dim"] * shape["num_hidden_layers"]
    return float((layers_p + lm_p) * itemsize + batch * context * kv * itemsize)


def prefill_once(engine: Any, n: int) -> Callable[[], Any]:
    from srt_ext.engines.reference import ForwardItem

    ids = torch.randint(0, engine.vocab_size, (n,), generator=torch.Generator().manual_seed(n))

    def run() -> None:
        slots = engine.allocator.alloc(n)
        try:
            engine.forward([ForwardItem("p", ids.tolist(), 0, slots[:0], slots, True)])
        finally:
            engine.allocator.free(slots)

    return run


def decode_step(engine: Any, batch: int, context: int, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of ``batch`` requests, one token each, after
    a ``context``-token prefill (not timed) and one untimed step."""
    from srt_ext.engines.reference import ForwardItem

    alloc, gen = engine.allocator, torch.Generator().manual_seed(batch)
    slots = [alloc.alloc(context + steps + 1) for _ in range(batch)]
    try:
        toks = engine.forward([
            ForwardItem(f"r{i}", torch.randint(0, engine.vocab_size, (context,), generator=gen)
                        .tolist(), 0, s[:0], s[:context], True)
            for i, s in enumerate(slots)
        ])  # fmt: skip
        wall = cpu = 0.0
        for step in range(steps + 1):
            pos = context + step
            items = [
                ForwardItem(f"r{i}", [int(t)], pos, s[:pos], s[pos : pos + 1], True)
                for i, (t, s) in enumerate(zip(toks, slots, strict=True))
            ]
            w0, c0 = time.perf_counter(), time.process_time()
            toks = engine.forward(items)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            if step:  # step 0 is warm-up
                wall, cpu = wall + w, cpu + c
    finally:
        for s in slots:
            alloc.free(s)
    return wall / steps, cpu / steps


def measure_path(args: argparse.Namespace, model: Path, shape: dict[str, Any], dtype: torch.dtype,
                 machine: Machine, bar: tqdm) -> list[Row]:  # fmt: skip
    from srt_ext.engines.reference import ReferenceEngine

    sizes, batches = args.sizes, args.batches
    cap = max(max(sizes), max(batches) * (args.context + args.steps + 2)) + 16
    engine = ReferenceEngine(model, dtype=dtype, kv_capacity_tokens=cap)
    name = (
        f"{str(dtype).removeprefix('torch.')} ({'after' if engine.model.plan.sized else 'before'})"
    )
    item = dtype.itemsize
    rows = []
    prefill_once(engine, 64)()  # warm-up
    for n in sizes:
        bar.set_description(f"{name} prefill {n}")
        wall, cpu = best_of(prefill_once(engine, n), args.repeats)
        bound = prefill_flops(shape, n) / (machine.gflops_fp32 * 1e9)
        rows.append(Row(name, "prefill", n, wall, cpu, bound, bound))
        bar.update()
    for b in batches:
        bar.set_description(f"{name} decode x{b}")
        wall, cpu = decode_step(engine, b, args.context, args.steps)
        gbs = machine.read_gbps * 1e9
        own, f32 = (decode_bytes(shape, b, args.context, s) / gbs for s in (item, 4))
        rows.append(Row(name, "decode", b, wall, cpu, own, f32))
        bar.update()
    del engine
    gc.collect()
    return rows



def run(args: argparse.Namespace) -> int:
    from eval.bench_cpu_report import plot, table

    torch.set_num_threads(args.threads)
    args.sizes = [int(x) for x in str(args.sizes).split(",")]
    args.batches = [int(x) for x in str(args.batches).split(",")]
    dtypes = [getattr(torch, d) for d in str(args.paths).split(",")]
    tmp = None
    if args.model_path:
        model = Path(args.model_path)
        shape = json.loads((model / "config.json").read_text())
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-cpu-")
        shape = SMOLLM2_135M
        model = write_random_llama(tmp.name, shape, seed=0)
    try:
        steps = 3 + len(dtypes) * (len(args.sizes) + len(args.batches))
        with tqdm(total=steps, unit="step") as bar:
            bar.set_description("GEMM fp32")
            g32 = gemm_rate(torch.float32)
            bar.update()
            bar.set_description("GEMM fp64")
            g64 = gemm_rate(torch.float64)
            bar.update()
            bar.set_description("bandwidth")
            machine = Machine(args.threads, g32, g64, read_bandwidth())
            bar.update()
            rows = [r for d in dtypes for r in measure_path(args, model, shape, d, machine, bar)]
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"\nmodel {model.name if args.model_path else 'random SmolLM2-135M shape'}, "
          f"{args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print(f"GEMM fp32 {g32:.1f} GFLOP/s, fp64 {g64:.1f} GFLOP/s (fp64/fp32 {g64 / g32:.2f}); "
          f"read bandwidth {machine.read_gbps:.1f} GB/s\n")  # fmt: skip
    print(table(rows, partial(prefill_flops, shape), args.context))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"machine": asdict(machine), "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    if args.plot:
        plot(rows, args.plot)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench-cpu", help="engine prefill/decode vs the CPU's GEMM and memory bounds"
    )
    build(p)
    p.set_defaults(func=run)


def build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", default=None, help="Llama dir (default: random SmolLM2 shape)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (results promised per count)"
    )
    p.add_argument("--paths", default="float64,float32", help="exact paths to measure (dtypes)")
    p.add_argument("--sizes", default="256,1024,2048", help="prefill chunk tokens")
    p.add_argument("--batches", default="1,8", help="decode batch sizes")
    p.add_argument("--context", type=int, default=512, help="prompt tokens per decode request")
    p.add_argument("--steps", type=int, default=8, help="timed decode steps")
    p.add_argument("--repeats", type=int, default=2, help="prefill repeats (best is kept)")
    p.add_argument("--json", help="write machine numbers and rows as JSON")
    p.add_argument("--plot", help="draw %% of bound per path to this PNG")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    build(ap)
    raise SystemExit(run(ap.parse_args()))
