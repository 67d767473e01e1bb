"""Sweep one of ``ours``' constants on seeds that the tables do not report.

    python -m eval.tune_ours --set AGING=0.1,0.3,1.0 --seeds 0,4,5 \\
        --workloads anns:2:30,crawler:4,anns:2 [--trace out/traces/anns-large-beam-score.jsonl:2]

Why: `ours`' constants (scheduler/ours.py) are tuned with the simulator, and the
tables in docs/performance.md are reported on seeds 1-3 that played no part in it
(``eval.sim_cli.UNTUNED_SEEDS``). This runs every value of one class constant of
``OursPolicy`` on every workload and seed, with plain non-streaming (FCFS) as the
baseline, and prints ×P50 / ×P99 per seed, so a change is judged on all of them at
once. Workloads are ``name:qps[:delay multiplier]`` (the generator, every delay
stretched) or, with ``--trace PATH:qps``, a recorded trace expanded to the fitted
timing (eval/record_traces.py).
"""

from __future__ import annotations

import argparse
import warnings
from multiprocessing import Pool
from typing import Any

import numpy as np

HW = "h200-tp2-llama3-8b-mfu75"
BASELINE = "non-streaming"


def _queries(spec: str, seed: int, num_queries: int) -> tuple[list[Any], int]:
    """(queries, token budget) of a workload spec."""
    from eval.sim import stretch_delays
    from eval.workloads import generate

    if spec.startswith("trace="):
        from eval.record_traces import expand
        from stream2llm.trace import read_trace

        path, qps = spec.removeprefix("trace=").rsplit(":", 1)
        recorded = list(read_trace(path))
        workload = "anns" if recorded[0].mode == "update" else "crawler"
        return (expand(recorded, workload, float(qps), num_queries, seed),
                8192 if workload == "anns" else 2048)
    name, qps, *rest = spec.split(":")
    mult = float(rest[0]) if rest else 1.0
    qs = stretch_delays(generate(name, float(qps), num_queries, seed, delay_multiplier=mult), mult)
    return qs, 8192 if name == "anns" else 2048


def _run(job: tuple[str, int, int, str, str, float | None]) -> tuple[Any, float, float]:
    spec, seed, num_queries, hardware, const, value = job
    warnings.filterwarnings("ignore")
    from eval.sim import SimConfig, simulate
    from scheduler.ours import OursPolicy

    qs, budget = _queries(spec, seed, num_queries)
    if value is not None:  # this worker process only; ints stay ints (token counts)
        kind = type(getattr(OursPolicy, const))
        setattr(OursPolicy, const, kind(value) if kind in (int, float) else value)
    cfg = SimConfig(policy="fcfs" if value is None else "ours", hardware=hardware,
                    token_budget=budget, streaming=value is not None)  # fmt: skip
    t = simulate(qs, cfg).ttft_s
    return job, float(np.percentile(t, 50)), float(np.percentile(t, 99))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", required=True, help="CONSTANT=v1,v2,... of OursPolicy")
    p.add_argument("--seeds", default="0,4,5", help="seeds not used by the tables (not 1-3)")
    p.add_argument("--workloads", default="anns:2:30,crawler:4,anns:2")
    p.add_argument("--trace", action="append", default=[], help="PATH:QPS of a recorded trace")
    p.add_argument("--num-queries", type=int, default=500)
    p.add_argument("--hardware", default=HW)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    from scheduler.ours import OursPolicy

    const, _, values = args.set.partition("=")
    if not hasattr(OursPolicy, const) or not values:
        p.error(f"--set: expected CONSTANT=v1,v2 with a constant of OursPolicy, got {args.set!r}")
    vals = [float(v) for v in values.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if set(seeds) & {1, 2, 3}:
        print("warning: seeds 1-3 are the reported ones; tuning on them biases the tables")
    specs = [w for w in args.workloads.split(",") if w] + [f"trace={t}" for t in args.trace]
    jobs = [(w, s, args.num_queries, args.hardware, const, v)
            for w in specs for s in seeds for v in [None, *vals]]  # fmt: skip
    got: dict[Any, tuple[float, float]] = {}
    with Pool(args.jobs) as pool:
        for i, (job, p50, p99) in enumerate(pool.imap_unordered(_run, jobs), 1):
            got[job] = (p50, p99)
            what = BASELINE if job[5] is None else f"{const}={job[5]:g}"
            print(f"[{i}/{len(jobs)}] {job[0]} seed {job[1]} {what}: "
                  f"P50 {p50:.3f} s, P99 {p99:.3f} s", flush=True)  # fmt: skip
    print(f"\n×P50 / ×P99 against plain non-streaming, seeds {args.seeds}")
    for w in specs:
        print(w)
        for v in vals:
            cells = []
            for s in seeds:
                b = got[(w, s, args.num_queries, args.hardware, const, None)]
                o = got[(w, s, args.num_queries, args.hardware, const, v)]
                cells.append(f"{b[0] / o[0]:.2f}/{b[1] / o[1]:.2f}")
            print(f"  {const}={v:g}: " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
