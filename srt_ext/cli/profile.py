"""`stream2llm profile`: measure the engine and write the cost-model JSON the scheduler loads.

    stream2llm profile [--engine sglang|reference] [--model-path DIR] [--device cpu|cuda]
        [--max-tokens 4096] [--repeats 7 --warmup 2] --out scheduler/profiles/NAME.json

``--engine sglang`` (the default) times SGLang's own engine, which serves:
its server's prefill and decode, and swaps through its KV pool
(srt_ext/cli/profile_sglang.py). ``--engine reference`` times our retiring
PyTorch engine's forward in process (below); `stream2llm validate` still uses it,
with the mixed-step design and fixed costs of its worker.

The cost-based preemption rule compares prefill-of-N against swap-of-N, so the
two curves must come from the engine that will run, not from a roofline guess
(``scheduler/derive_profiles.py`` makes those, marked ``"derived": true``).
Each point is the median of ``--repeats`` timed runs after ``--warmup`` untimed
ones (the median, not the best, because the scheduler pays typical latency on
a shared machine). Decode steps (batch x context) are measured too so the
simulator's step model is fitted on the same hardware. The file is checked by
loading it with ``scheduler.cost_model.CostModel``, whose R^2 are printed and
recorded.

The profile's ``"fixed"`` block holds the costs real serving pays besides the
forward pass (per request, per chunk, per step, per sampled token, tokenization
per 1K tokens; srt_ext/cli/profile_fixed.py), measured on a real server started
here with the same model, each with its source.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="measure prefill/swap/decode latency -> cost model")
    p.add_argument("--engine", choices=("sglang", "reference"), default="sglang",
                   help="sglang (default): SGLang's own server and KV pool; reference: our "
                   "retiring PyTorch engine in process (what `stream2llm validate` uses)")
    p.add_argument("--model-path", default=None, help="model: smollm2-135m-instruct (default, converted once on first use), tiny-random, or a Llama-architecture HF checkpoint dir")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", choices=("auto", "float32", "float64", "bfloat16"), default="auto")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest N (powers of two >= 16)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--decode-batches", default="1,4,16", help="decode batch sizes to time")
    p.add_argument("--steps", type=int, default=192,
                   help="--engine reference: mixed steps of a seeded random design to time (srt_ext/cli/profile_steps.py)")
    p.add_argument(
        "--kv-capacity-tokens",
        type=int,
        default=16384,
        help="KV pool the server will run with (recorded for the simulator)",
    )
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads here and in the profiled server (0: torch's default)")
    p.add_argument("--skip-http", action="store_true",
                   help="do not time the HTTP path (chunk/ack/request = 0)")
    p.add_argument("--name", default=None, help="profile name (default: the output file's stem)")
    p.add_argument("--out", required=True, help="where to write the profile JSON")
    p.set_defaults(func=run)
    return p


def sizes(max_tokens: int) -> list[int]:
    """16, 32, ... up to ``max_tokens`` (at least three points: the fit needs them)."""
    out, n = [], 16
    while n <= max(max_tokens, 64):
        out.append(n)
        n *= 2
    return out


def timed(fn: Callable[[], float], repeats: int, warmup: int) -> float:
    """Median of ``repeats`` runs of ``fn`` (which returns its own duration)."""
    for _ in range(warmup):
        fn()
    return statistics.median(fn() for _ in range(max(1, repeats)))


def forward_s(engine: Any, items: list[Any]) -> float:
    """Seconds of one engine step over ``items``, device work included (synchronized
    before and after on CUDA, where kernels run asynchronously)."""
    import torch

    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(engine.device)
    t0 = time.perf_counter()
    engine.forward(items)
    if cuda:
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - t0


def prefill_s(engine: Any, n: int) -> float:
    """One forward of ``n`` tokens from scratch, sampling nothing (the LM head and
    sampler are the profile's ``fixed.sampled_token_s``, charged per sampling row)."""

    from srt_ext.engines.reference import ForwardItem

    slots = engine.allocator.alloc(n)
    if slots is None:
        raise RuntimeError(f"KV pool too small to profile {n} tokens")
    ids = [(n * 131 + i * 17) % engine.vocab_size for i in range(n)]
    try:
        return forward_s(engine, [ForwardItem("profile", ids, 0, slots[:0], slots, sample=False)])
    finally:
        engine.allocator.free(slots)


def items_step_s(engine: Any, items: list[tuple[int, int, int]]) -> float:
    """One forward over ``(start, n, sample)`` items (the first ``start`` positions'
    KV is whatever the pool holds: timing does not depend on it)."""

    from srt_ext.engines.reference import ForwardItem

    slots = engine.allocator.alloc(sum(st + n for st, n, _ in items))
    if slots is None:
        raise RuntimeError(f"KV pool too small to profile {items}")
    fwd, off = [], 0
    for k, (st, n, sample) in enumerate(items):
        row = slots[off : off + st + n]
        ids = [(k * 977 + i * 17) % engine.vocab_size for i in range(n)]
        fwd.append(ForwardItem(f"c{k}", ids, st, row[:st], row[st:], sample=bool(sample)))
        off += st + n
    try:
        return forward_s(engine, fwd)
    finally:
        engine.allocator.free(slots)


def decode_step_s(engine: Any, batch: int, context: int, repeats: int, warmup: int) -> float:
    """One decode step of ``batch`` requests at ``context`` tokens each (KV content
    is whatever the pool holds: timing does not depend on it)."""

    from srt_ext.engines.reference import ForwardItem

    slots = engine.allocator.alloc(batch * (context + 1))
    if slots is None:
        raise RuntimeError(f"KV pool too small for decode {batch}x{context}")
    rows = slots.view(batch, context + 1)
    items = [
        ForwardItem(f"d{b}", [7], context, rows[b, :context], rows[b, context:], sample=False)
        for b in range(batch)
    ]

    try:
        return timed(lambda: forward_s(engine, items), repeats, warmup)
    finally:
        engine.allocator.free(slots)


def machine_info(engine: Any) -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "exact_path": engine.exact,
        "model": str(engine.model_path),
        "layers": engine.arch.num_layers,
        "kv_heads": engine.arch.num_kv_heads,
        "head_dim": engine.arch.head_dim,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if engine.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(engine.device)
    return info


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement; the profile dict in cost_model.py's format."""
    import torch

    import radix_stream  # noqa: F401  (sglang importable on the CPU stack)
    from srt_ext.cli.profile_fixed import measure_fixed
    from srt_ext.engines.reference import ReferenceEngine

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)

    ns = sizes(args.max_tokens)
    batches = [int(b) for b in args.decode_batches.split(",") if b.strip()]
    contexts = sorted({min(ns[-1], 256), ns[-1] // 4 or 16, ns[-1]})
    batch_ns = sorted({min(32, ns[-1]), min(128, ns[-1])})
    cap = max(5 * ns[-1], max(b * (c + 1) for b in batches for c in contexts), 8 * batch_ns[-1])
    from srt_ext.engines.reference.engine import parse_dtype

    engine = ReferenceEngine(args.model_path, device=args.device, kv_capacity_tokens=cap,
                             dtype=parse_dtype(args.dtype), warm=True)  # fmt: skip
    if ns[-1] > engine.max_context_len:
        raise SystemExit(f"--max-tokens {ns[-1]} > the model's context {engine.max_context_len}")
    rep, warm = args.repeats, args.warmup
    prefill, swap = [], []

    def swap_s(n: int) -> float:  # out + in
        return sum(engine.profile_swap(n, 1))

    for n in ns:
        prefill.append(timed(partial(prefill_s, engine, n), rep, warm))
        swap.append(timed(partial(swap_s, n), rep, warm))
        print(f"  N={n:6d}  prefill {prefill[-1] * 1e3:9.3f} ms  swap out+in "
              f"{swap[-1] * 1e3:8.3f} ms", file=sys.stderr)  # fmt: skip
    dec: dict[str, list] = {"batch": [], "context": [], "seconds": []}
    for b in batches:
        for c in contexts:
            dec["batch"].append(b)
            dec["context"].append(c)
            dec["seconds"].append(round(decode_step_s(engine, b, c, rep, warm), 7))
    # prefill chunks at depth and several items per step: what a streaming server runs
    chunk: dict[str, list] = {"start": [], "tokens": [], "seconds": []}
    for st in sorted({ns[-1] // 4, ns[-1] // 2}):
        for n in sorted({min(ns[-1] // 4, 512), 64}):
            chunk["start"].append(st)
            chunk["tokens"].append(n)
            chunk["seconds"].append(round(timed(partial(items_step_s, engine, [(st, n, 0)]),
                                                rep, warm), 7))  # fmt: skip
    batch: dict[str, list] = {"items": [], "tokens": [], "seconds": []}
    for k in (4, 8):
        for n in batch_ns:
            batch["items"].append(k)
            batch["tokens"].append(n)
            batch["seconds"].append(round(timed(partial(items_step_s, engine, [(0, n, 0)] * k),
                                                rep, warm), 7))  # fmt: skip
    from srt_ext.cli.profile_steps import engine_layout, measure_idle, measure_steps

    layout = engine_layout(engine)
    n_steps = getattr(args, "steps", 192)
    steps = measure_steps(engine, ns[-1], n_steps)
    idle = measure_idle(engine, {"prefill": {"tokens": ns, "seconds": prefill}, "steps": steps,
                                 "layout": layout}, ns[-1], max(2, n_steps // 4))  # fmt: skip
    print(f"  {len(steps['seconds'])} mixed steps timed; after idle {idle}", file=sys.stderr)
    fixed = measure_fixed(engine, args)
    print(f"  fixed: { {k: v for k, v in fixed.items() if k != 'source'} }", file=sys.stderr)
    pool = engine.pool.k_buffer[0]
    kv_bytes = 2 * engine.arch.num_layers * pool[0].numel() * pool.element_size()
    name = args.name or Path(args.out).stem
    return {
        "name": name,
        "derived": False,
        "description": f"measured by `stream2llm profile` on {engine.device} "
        f"({engine.arch.num_layers}-layer model, {str(engine.dtype).removeprefix('torch.')}); "
        f"median of {rep} after {warm} warm-up",
        "machine": machine_info(engine),
        "method": {"repeats": rep, "warmup": warm, "statistic": "median",
                   "swap": "out + in through the engine's KV mover (SGLang get/load_cpu_copy)",
                   "prefill_decode": "forward only, no sampling row (see fixed)"},
        "kv_bytes_per_token": int(kv_bytes),
        "kv_capacity_tokens": int(args.kv_capacity_tokens),
        "prefill": {"tokens": ns, "seconds": [round(s, 7) for s in prefill]},
        "swap": {"tokens": ns, "seconds": [round(s, 7) for s in swap]},
        "decode": dec,
        "chunk": chunk,
        "batch": batch,
        "steps": steps,
        "idle": idle,
        "layout": layout,
        "fixed": fixed,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "reference") == "sglang":
        from srt_ext.cli.profile_sglang import measure_sglang

        profile = measure_sglang(args)
    else:
        profile = measure(args)
    return write_profile(profile, Path(args.out))


def write_profile(profile: dict[str, Any], out: Path) -> int:
    """Record the fits (R^2; CostModel warns under 0.9) and write the JSON."""
    from scheduler.cost_model import CostModel

    fit = CostModel(profile).describe()
    profile["fit"] = {k: v for k, v in fit.items() if k not in ("name", "derived")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=1) + "\n")
    CostModel.load(out)  # what the scheduler will do with it
    print(f"wrote {out}: prefill fit {fit['prefill_fit']}, swap fit {fit['swap_fit']}, "
          f"step fit R^2 {fit['step_fit_r2']}")  # fmt: skip
    return 0
