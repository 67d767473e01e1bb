"""`stream2llm bench-streams --oneshot`: what the plugin costs plain one-shot traffic.

SGLang's own load generator (``python -m sglang.benchmark.serving``: random token
ids, 256 in / 32 out, 48 prompts, 8 at a time) against SGLang's server with
stream2llm plugged in (``sglang``: our tree and scheduler hooks) and against stock
SGLang (``stock``: no plugin, SGLang's default tree), each on a fresh server with
the same pool on the same box. Runs alternate (sglang, stock, sglang, stock, ...)
so that drift in the box's load hits both sides alike; each round reports the
plugin's output throughput over stock's (target >= 0.99).

SGLang's generator needs the tokenizer as a local directory (offline) and imports
Hugging Face ``datasets`` at start (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess as sp
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.bench_servers import REPO_ROOT, ServerSpec, running
from eval.metrics import format_table
from srt_ext.engines.reference.model_store import resolve_model

ONESHOT_ENGINES = ("sglang", "stock")
TARGET_RATIO = 0.99


def add_oneshot_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("one-shot overhead (--oneshot)")
    g.add_argument("--oneshot", action="store_true",
                   help="instead of streams: sglang.benchmark.serving against SGLang with "
                   "the plugin vs stock SGLang, alternating")  # fmt: skip
    g.add_argument("--oneshot-rounds", type=int, default=2, help="(plugin, stock) pairs")
    g.add_argument("--oneshot-prompts", type=int, default=48)
    g.add_argument("--oneshot-concurrency", type=int, default=8)
    g.add_argument("--oneshot-input", type=int, default=256, help="input tokens per prompt")
    g.add_argument("--oneshot-output", type=int, default=32, help="output tokens per prompt")
    g.add_argument("--oneshot-pool", type=int, default=16384, help="KV pool tokens (both)")


@dataclass
class OneshotRun:
    """One load-generator pass against one fresh server."""

    round: int
    engine: str
    output_throughput: float  # output tokens / s (SGLang's generator)
    request_throughput: float
    median_ttft_ms: float
    median_itl_ms: float
    completed: int
    duration_s: float


def serving_argv(url: str, tokenizer: str, out: Path, args: argparse.Namespace) -> list[str]:
    """SGLang's generator: random ids of a fixed length (range ratio 1), greedy,
    lengths fixed by ``ignore_eos`` (its default), one warm-up request per slot of
    concurrency first (first-forward initialization is not measured), one result
    line in ``out``."""
    return [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang",
            "--base-url", url, "--dataset-name", "random-ids",
            "--random-input-len", str(args.oneshot_input),
            "--random-output-len", str(args.oneshot_output), "--random-range-ratio", "1",
            "--num-prompts", str(args.oneshot_prompts),
            "--max-concurrency", str(args.oneshot_concurrency),
            "--model", tokenizer, "--tokenizer", tokenizer, "--seed", str(args.seed),
            "--warmup-requests", str(args.oneshot_concurrency),
            "--output-file", str(out), "--disable-tqdm"]  # fmt: skip


def one_pass(rnd: int, engine: str, tokenizer: str, args: argparse.Namespace,
             work: Path) -> OneshotRun:  # fmt: skip
    spec = ServerSpec(engine, args.model_path, args.oneshot_pool, args.threads, args.token_budget)
    out = work / f"oneshot-{rnd}-{engine}.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with running(spec, args.log_dir, progress=not args.quiet) as url:
        log = work / f"oneshot-{rnd}-{engine}.log"
        with open(log, "wb") as fh:
            rc = sp.call(serving_argv(url, tokenizer, out, args), stdout=fh, stderr=sp.STDOUT,
                         env=env, cwd=str(REPO_ROOT))  # fmt: skip
    if rc != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"sglang.benchmark.serving failed ({rc}); log {log}:\n{tail}")
    r: dict[str, Any] = json.loads(out.read_text().splitlines()[-1])
    return OneshotRun(rnd, engine, float(r["output_throughput"]),
                      float(r["request_throughput"]), float(r["median_ttft_ms"]),
                      float(r["median_itl_ms"]), int(r["completed"]), float(r["duration"]))  # fmt: skip


def ratios(runs: list[OneshotRun]) -> list[float]:
    """Per round: plugin output throughput / stock's."""
    by = {(r.round, r.engine): r.output_throughput for r in runs}
    rounds = sorted({r.round for r in runs})
    return [by[(i, "sglang")] / by[(i, "stock")] for i in rounds
            if (i, "sglang") in by and (i, "stock") in by and by[(i, "stock")] > 0]  # fmt: skip


def run_oneshot(args: argparse.Namespace) -> int:
    if args.oneshot_rounds < 1:
        print("stream2llm bench-streams: --oneshot-rounds must be >= 1", file=sys.stderr)
        return 2
    tokenizer = str(resolve_model(args.model_path))
    work = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-oneshot-"))
    work.mkdir(parents=True, exist_ok=True)
    order = [(i, e) for i in range(args.oneshot_rounds) for e in ONESHOT_ENGINES]
    runs = []
    for i, e in tqdm(order, desc="bench-oneshot", unit="run", disable=args.quiet):
        runs.append(one_pass(i, e, tokenizer, args, work))
        tqdm.write(f"round {i} {e}: {runs[-1].output_throughput:.2f} output tok/s")  # kept if cut
    rows = [asdict(r) for r in runs]
    print(format_table(rows, list(rows[0])))
    rs = ratios(runs)
    verdict = "MET" if rs and min(rs) >= TARGET_RATIO else "NOT MET"
    print("plugin / stock output throughput per round: "
          + ", ".join(f"{x:.3f}" for x in rs)
          + (f"; median {statistics.median(rs):.3f} (target >= {TARGET_RATIO}: {verdict})"
             if rs else ""))  # fmt: skip
    if args.json_out:
        cfg = {k: getattr(args, k) for k in ("oneshot_rounds", "oneshot_prompts",
               "oneshot_concurrency", "oneshot_input", "oneshot_output", "oneshot_pool",
               "threads", "token_budget", "seed")}  # fmt: skip
        cfg["model"] = tokenizer
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(
            {"config": cfg, "runs": rows, "ratios": rs}, indent=1) + "\n")  # fmt: skip
    return 0
