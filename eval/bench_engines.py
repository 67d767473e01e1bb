"""Prefill and decode speed of both engines through the same HTTP route.

    PYTHONPATH=. .venv/bin/python eval/bench_engines.py [--model-path DIR] [--threads 1]
        [--lengths 128,512,1024] [--decode-tokens 64] [--repeats 3] [--engines reference,sglang]

Starts each server in turn (our reference server; SGLang's own server with our
tree, ``--engine sglang``), with the same model, the same thread count and the
same requests, and times ``POST /generate`` from the client:

* prefill: a fresh random prompt of L tokens (no cache hit), 1 new token:
  the latency is prefill + one sampling step + HTTP; tokens/s = L / latency;
* decode: a 128-token prompt, ``--decode-tokens`` new tokens vs 1 new token,
  greedy with ``ignore_eos``: decode tokens/s = (D - 1) / (t_D - t_1).

Median over ``--repeats``; prints a Markdown table. Not a test: the numbers
depend on the machine and its load (say so next to them).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from tqdm import tqdm

DECODE_PROMPT = 128


@contextmanager
def running(engine: str, model_path: str | None, threads: int, pool: int) -> Iterator[str]:
    """Base URL of a freshly started server of ``engine``; stopped afterwards."""
    if engine == "reference":
        from srt_ext.launch import launch_server

        with launch_server(model_path=model_path, threads=threads, max_total_tokens=pool) as h:
            yield h.url
        return
    from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

    cfg = SGLangServerConfig(model_path=model_path, threads=threads, max_total_tokens=pool,
                             log_level="warning")  # fmt: skip
    with SGLangServer(cfg) as s:
        print(f"  SGLang started in {s.startup_s:.0f} s (log {s.log_path})")
        yield s.url


def _timed(client: httpx.Client, url: str, ids: list[int], new: int) -> float:
    body: dict[str, Any] = {"input_ids": ids, "sampling_params": {
        "max_new_tokens": new, "temperature": 0, "ignore_eos": True}}  # fmt: skip
    t0 = time.perf_counter()
    r = client.post(url + "/generate", json=body)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    got = len(r.json()["output_ids"])
    if got != new:
        raise RuntimeError(f"asked for {new} tokens, got {got}")
    return dt


def measure(url: str, lengths: list[int], decode_tokens: int, repeats: int,
            seed: int = 0) -> dict[str, float]:  # fmt: skip
    rng = random.Random(seed)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(1000, 20000) for _ in range(n)]

    out: dict[str, float] = {}
    with httpx.Client(timeout=600) as client:
        _timed(client, url, prompt(16), 2)  # warm-up (first forward, lazy inits)
        steps = [(n, r) for n in lengths for r in range(repeats)]
        times: dict[int, list[float]] = {n: [] for n in lengths}
        for n, _ in tqdm(steps, desc="prefill", leave=False):
            times[n].append(_timed(client, url, prompt(n), 1))
        for n in lengths:
            out[f"prefill_{n}_s"] = statistics.median(times[n])
        one, many = [], []
        for _ in tqdm(range(repeats), desc="decode", leave=False):
            one.append(_timed(client, url, prompt(DECODE_PROMPT), 1))
            many.append(_timed(client, url, prompt(DECODE_PROMPT), decode_tokens))
        out["decode_tok_s"] = (decode_tokens - 1) / (statistics.median(many) - statistics.median(one))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default="tiny-random",
                    help="model name or Llama HF dir (default: tiny-random)")
    ap.add_argument("--engines", default="reference,sglang")
    ap.add_argument("--threads", type=int, default=1, help="torch/OMP threads per process")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", type=int, default=8192, help="KV pool tokens of each server")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    engines = [e.strip() for e in args.engines.split(",")]
    results: dict[str, dict[str, float]] = {}
    for engine in engines:
        print(f"{engine}: starting")
        with running(engine, args.model_path, args.threads, args.pool) as url:
            results[engine] = measure(url, lengths, args.decode_tokens, args.repeats)
    print(f"\nmodel {args.model_path}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}; client-side /generate latency, "
          f"median of {args.repeats}\n")  # fmt: skip
    print("| engine | " + " | ".join(f"prefill {n} (s, tok/s)" for n in lengths)
          + f" | decode tok/s ({args.decode_tokens} new, {DECODE_PROMPT}-token prompt) |")
    print("|---|" + "---:|" * (len(lengths) + 1))
    for engine, r in results.items():
        cells = [f"{r[f'prefill_{n}_s']:.3f}, {n / r[f'prefill_{n}_s']:,.0f}" for n in lengths]
        print(f"| {engine} | " + " | ".join(cells) + f" | {r['decode_tok_s']:.1f} |")
    if {"reference", "sglang"} <= results.keys():
        ref, sgl = results["reference"], results["sglang"]
        ratios = [ref[f"prefill_{n}_s"] / sgl[f"prefill_{n}_s"] for n in lengths]
        print(f"\nsglang/reference speed: prefill {', '.join(f'{x:.2f}x' for x in ratios)}; "
              f"decode {sgl['decode_tok_s'] / ref['decode_tok_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
