"""The GPU session's checks, as one short prepared run (`scripts/gpu-check.sh`).

    python -m eval.gpu_check --out DIR [--shape llama3-8b] [--steps env,tolerance,profile,sglang]
    python -m eval.gpu_check --smoke --out DIR      # the same code on CPU, tiny sizes (CI)

GPU time is lent in minutes (15 in all per task, ten per call), so every step
is bounded, prints progress, and writes what it measured to ``DIR/gpu-check.json``
the moment it finishes: a step that runs out of time leaves the earlier ones.

Steps:
- ``env``: torch/CUDA/device, and which of sglang, sgl_kernel, flashinfer import.
- ``tolerance``: the reference engine on the device (bf16 + SDPA) with a random
  model of the requested shape (drawn on the device: nothing travels) and the
  embedded tiny model: max |logit delta| and argmax agreement of chunked vs
  one-shot prefill with another request in the batch, greedy sequences streamed
  in chunks vs one-shot (how many are identical, where they first differ), and,
  for the tiny model, argmax agreement with the float64 CPU reference. The
  numbers the bf16 tolerance test (tests/test_engine_gpu.py) should use come
  out as ``suggested`` (observed worst x 2, agreement floors observed - 5 points).
- ``profile``: ``stream2llm profile`` on the device for the shape, and how far
  the derived H100/H200 profiles (scheduler/profiles) are from it per N.
- ``sglang``: whether SGLang's own engine can run here (see docs/sglang-engine.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

STEPS = ("env", "tolerance", "profile", "sglang")


def _log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step_env(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["torch_cuda"] = torch.version.cuda
    for mod in ("sglang", "sgl_kernel", "flashinfer", "transformers", "triton"):
        try:
            m = importlib.import_module(mod)
            info[mod] = str(getattr(m, "__version__", "importable"))
        except Exception as exc:  # noqa: BLE001 (any import failure is the finding)
            info[mod] = f"not importable: {type(exc).__name__}: {str(exc)[:160]}"
    return info


def chunk_logits(engine: Any, ids: list[int], chunks: list[int], other_len: int) -> torch.Tensor:
    """Next-token logits after ``ids`` prefilled in ``chunks``; when ``other_len`` > 0
    another request of that many tokens shares every step (batch composition varies)."""
    from srt_ext.engines.reference import ForwardItem

    alloc = engine.allocator
    slots, other = alloc.alloc(len(ids)), alloc.alloc(max(other_len, 1))
    pos, last = 0, None
    try:
        for c in chunks:
            items = [ForwardItem("a", ids[pos : pos + c], pos, slots[:pos], slots[pos : pos + c],
                                 pos + c == len(ids))]  # fmt: skip
            if other_len:
                items.append(ForwardItem("b", ids[:1] * other_len, 0, other[:0], other[:other_len],
                                         True))  # fmt: skip
            last = engine.logits(items)[0]
            pos += c
    finally:
        alloc.free(slots)
        alloc.free(other)
    assert last is not None
    return last.float().cpu()


def random_chunks(rng: random.Random, n: int, max_parts: int = 6) -> list[int]:
    cuts = (
        sorted({rng.randint(1, n - 1) for _ in range(rng.randint(1, max_parts))}) if n > 1 else []
    )
    return [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


def measure_tolerance(engine: Any, cases: int, max_len: int, greedy_cases: int, new_tokens: int,
                      reference: Any = None, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Chunked vs one-shot on ``engine`` (and argmax vs ``reference`` when given)."""
    from tqdm import tqdm

    from srt_ext.engines.reference.drive import greedy_generate

    rng = random.Random(seed)
    vocab = min(engine.vocab_size, 30000)  # ids the shipped tokenizer can also produce
    worst, agree, agree_ref, ref_cases = 0.0, 0, 0, 0
    for case in tqdm(range(cases), desc="chunked vs one-shot", file=sys.stderr):
        n = rng.randint(2, max_len)
        ids = [rng.randrange(vocab) for _ in range(n)]
        one = chunk_logits(engine, ids, [n], 0)
        chunked = chunk_logits(engine, ids, random_chunks(rng, n), rng.randint(0, 64))
        worst = max(worst, (one - chunked).abs().max().item())
        agree += int(one.argmax() == chunked.argmax())
        if reference is not None and case % 4 == 0:
            ref = chunk_logits(reference, ids, [n], 0)
            agree_ref += int(one.argmax() == ref.argmax())
            ref_cases += 1
    same, first_diff = 0, []
    for _ in tqdm(range(greedy_cases), desc="greedy streamed vs one-shot", file=sys.stderr):
        n = rng.randint(16, max_len)
        ids = [rng.randrange(vocab) for _ in range(n)]
        a = greedy_generate(engine, ids, new_tokens)
        b = greedy_generate(engine, ids, new_tokens, random_chunks(rng, n))
        same += int(a == b)
        if a != b:
            first_diff.append(next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y))
    out: dict[str, Any] = {
        "cases": cases,
        "max_abs_dlogit": worst,
        "argmax_agreement": agree / cases,
        "greedy_identical": f"{same}/{greedy_cases}",
        "greedy_first_divergence": first_diff,
        "new_tokens": new_tokens,
    }
    if ref_cases:
        out["argmax_agreement_vs_float64_cpu"] = agree_ref / ref_cases
    return out


def step_tolerance(device: str, shape: str, smoke: bool) -> dict[str, Any]:
    from srt_ext.engines.reference import ReferenceEngine
    from srt_ext.engines.reference.model_store import TINY_MODEL
    from srt_ext.engines.reference.shapes import ensure_shape_model

    max_len, cases, greedy = (96, 6, 2) if smoke else (1500, 60, 20)
    results: dict[str, Any] = {}
    _log(f"tolerance: tiny model on {device}")
    tiny = ReferenceEngine(TINY_MODEL, device=device, kv_capacity_tokens=8192)
    cpu64 = ReferenceEngine(TINY_MODEL, kv_capacity_tokens=8192, dtype=torch.float64, exact=True)
    emb = results["embedded-tiny"] = measure_tolerance(tiny, cases, max_len, greedy, 16, cpu64)
    emb["dtype"] = str(tiny.dtype).removeprefix("torch.")
    del tiny, cpu64
    _log(f"tolerance: random {shape} on {device}")
    t0 = time.perf_counter()
    big = ReferenceEngine(ensure_shape_model(shape), device=device, kv_capacity_tokens=8192)
    res = results[f"shape-{shape}"] = {"load_s": round(time.perf_counter() - t0, 2)}
    res.update(measure_tolerance(big, cases, max_len, greedy, 16))
    res["dtype"] = str(big.dtype).removeprefix("torch.")
    del big
    worst = max(r["max_abs_dlogit"] for r in results.values())
    results["suggested"] = {
        "MAX_ABS_DLOGIT": round(max(2 * worst, 1e-3), 4),
        "MIN_ARGMAX_AGREEMENT": round(
            min(r["argmax_agreement"] for r in results.values() if "argmax_agreement" in r) - 0.05,
            2,
        ),  # fmt: skip
    }
    return results


def step_profile(device: str, shape: str, smoke: bool, out_dir: Path) -> dict[str, Any]:
    from scheduler.cost_model import CostModel
    from srt_ext.cli import profile as profile_cli
    from srt_ext.engines.reference.shapes import ensure_shape_model

    name = f"{'smoke' if smoke else 'h200'}-{shape}-measured"
    parser = argparse.ArgumentParser()
    profile_cli.add_parser(parser.add_subparsers())
    out = out_dir / f"{name}.json"
    sizes = ["--max-tokens", "64", "--repeats", "1", "--warmup", "0", "--decode-batches", "1,4",
             "--kv-capacity-tokens", "8192", "--skip-http", "--threads", "1"] if smoke else [
             "--max-tokens", "16384", "--repeats", "5", "--warmup", "2", "--decode-batches",
             "1,8,32", "--kv-capacity-tokens", "262144"]  # fmt: skip
    # a shape model is random weights made at load (random_init.json, no weight files),
    # which only the reference engine's forward can build
    args = parser.parse_args(["profile", "--engine", "reference",
                              "--model-path", str(ensure_shape_model(shape)),
                              "--device", device, "--name", name, "--out", str(out), *sizes])  # fmt: skip
    _log(f"profile: {args.out}")
    profile_cli.run(args)
    measured = CostModel.load(args.out)
    ns = json.loads(Path(args.out).read_text())["prefill"]["tokens"]
    compare: dict[str, Any] = {}
    for derived in ("h100-tp2-llama3-8b", "h200-tp2-llama3-8b", "h200-tp2-llama3-8b-mfu75"):
        model = CostModel.load(derived)
        compare[derived] = {
            "prefill_derived_over_measured": {
                n: round(model.prefill_s(n) / measured.prefill_s(n), 3) for n in ns
            },  # fmt: skip
            "swap_derived_over_measured": {
                n: round(model.swap_s(n) / measured.swap_s(n), 3) for n in ns
            },  # fmt: skip
        }
    return {"profile": args.out, "fit": measured.describe(), "derived_vs_measured": compare,
            "note": "derived profiles are TP=2 (two GPUs); this machine has one"}  # fmt: skip


# Why SGLang's own engine cannot be brought up on the lent GPU machine within one task's
# device time (sizes from PyPI, 2026-11-30; see docs/sglang-engine.md).
SGLANG_BLOCKERS = {
    "sglang 0.5.23 (ours)": "pins torch==2.14.1; the GPU image has torch 2.11 (CUDA 13)",
    "sglang 0.5.15 (pinned to torch 2.11)": "needs sglang-kernel 0.4.4 (x86_64 wheel 586.6 MiB) and "
    "flashinfer-python 0.6.12 (13.3 MiB) + flashinfer-cubin 0.6.12 (426.8 MiB): ~1,027 MiB, "
    ">= 17 calls at 64 MiB each, more than the 15 minutes of device time; and its cache API "
    "(cache_finished_req/cache_unfinished_req) predates the checkpoint() API our tree overrides",
}


def step_sglang() -> dict[str, Any]:
    found = {
        m: importlib.util.find_spec(m) is not None for m in ("sglang", "sgl_kernel", "flashinfer")
    }
    runnable = all(found.values())
    return {"importable": found, "launchable": runnable,
            "blockers": {} if runnable else SGLANG_BLOCKERS}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.gpu_check", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, help="directory for gpu-check.json and the profile")
    p.add_argument(
        "--shape", default="llama3-8b", help="random-weight model shape (srt_ext.engines.reference.shapes)"
    )
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    p.add_argument(
        "--smoke", action="store_true", help="CPU, tiny shape and sizes: checks the wiring"
    )
    args = p.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    if unknown := set(steps) - set(STEPS):
        p.error(f"unknown steps: {', '.join(sorted(unknown))}")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: run on the GPU machine, or pass --smoke")
    shape = "tiny" if args.smoke else args.shape
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"smoke": args.smoke, "shape": shape, "started": time.time()}
    path = out_dir / "gpu-check.json"
    for step in steps:
        t0 = time.perf_counter()
        _log(f"step {step}")
        if step == "env":
            report["env"] = step_env(device)
        elif step == "tolerance":
            report["tolerance"] = step_tolerance(device, shape, args.smoke)
        elif step == "profile":
            report["profile"] = step_profile(device, shape, args.smoke, out_dir)
        elif step == "sglang":
            report["sglang"] = step_sglang()
        report.setdefault("seconds", {})[step] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    _log(f"wrote {path}")
    print(json.dumps({k: v for k, v in report.items() if k != "started"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
