"""Throughput of the reference engine (issue 4): prefill tokens/s and decode steps/s.

    .venv/bin/python eval/bench_engine.py [--model-path DIR] [--device cpu] [--threads 1]

Prints a Markdown table (docs/performance.md keeps one). Not a test: numbers
depend on the machine and its load. Decode runs ``--batch`` requests with
``--context`` tokens of prompt each, one token per request per step.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from srt_ext.engines.reference import ForwardItem, ReferenceEngine


def bench_prefill(engine: ReferenceEngine, n: int, repeats: int) -> tuple[float, float, float]:
    """(prefill s, swap-out s, swap-in s) for n tokens, best of repeats."""
    out_s, in_s = engine.profile_swap(n, repeats)
    return engine.profile_prefill(n, repeats), out_s, in_s


def bench_decode(engine: ReferenceEngine, batch: int, context: int, steps: int) -> float:
    """Decode steps per second with ``batch`` requests in every step."""
    alloc = engine.allocator
    gen = torch.Generator().manual_seed(batch)
    slots = [alloc.alloc(context + steps + 1) for _ in range(batch)]
    prompts = [
        torch.randint(0, engine.vocab_size, (context,), generator=gen).tolist() for _ in slots
    ]
    toks = engine.forward(
        [
            ForwardItem(f"r{i}", p, 0, s[:0], s[:context], True)
            for i, (p, s) in enumerate(zip(prompts, slots, strict=True))
        ]
    )
    t0 = 0.0
    for step in range(steps + 1):
        if step == 1:  # step 0 is warm-up
            t0 = time.perf_counter()
        pos = context + step
        items = [
            ForwardItem(f"r{i}", [int(t)], pos, s[:pos], s[pos : pos + 1], True)
            for i, (t, s) in enumerate(zip(toks, slots, strict=True))
        ]
        toks = engine.forward(items)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    for s in slots:
        alloc.free(s)
    return steps / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None, help="model: smollm2-135m-instruct (default, converted once on first use), tiny-random, or a Llama-architecture HF checkpoint dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--sizes", default="64,128,256,512,1024,2048")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="fast (non-exact) layout on CPU too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.sizes.split(",")]
    engine = ReferenceEngine(
        args.model_path,
        device=args.device,
        kv_capacity_tokens=max(8192, 2 * max(sizes)),
        exact=False if args.fast else None,
    )
    engine.profile_prefill(64)  # warm-up
    print(
        f"model {engine.model_path.name}, device {args.device}, dtype {str(engine.dtype).split('.')[-1]}, "
        f"{'exact' if engine.exact else 'fast'} layout, {args.threads} thread(s), "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}\n"
    )
    print("| prefill N | seconds | tokens/s | swap out+in (ms) |")
    print("|---:|---:|---:|---:|")
    for n in sizes:
        pre, out_s, in_s = bench_prefill(engine, n, args.repeats)
        print(f"| {n} | {pre:.3f} | {n / pre:,.0f} | {1e3 * (out_s + in_s):.2f} |")
    print("\n| decode batch | context | steps/s | tokens/s |\n|---:|---:|---:|---:|")
    for b in [int(x) for x in args.batches.split(",")]:
        rate = bench_decode(engine, b, args.context, args.steps)
        print(f"| {b} | {args.context} | {rate:.1f} | {rate * b:.1f} |")


if __name__ == "__main__":
    main()
