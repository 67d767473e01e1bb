"""`stream2llm sim`: streaming schedulers vs the non-streaming baseline, simulated.

    stream2llm sim --workload crawler --qps 4 --schedulers fcfs,lcas,mcps,default,ours \\
        --preemption cost --hardware h200-tp2-llama3-8b --num-queries 2000 --seed 0 \\
        [--delay-multiplier 10 --stretch all|gaps] --json out.json [--plot DIR]

``--delay-multiplier`` stretches every delay of a generated trace by default
(``--stretch all``: the search latency too, as the paper's ANNS driver does);
``--stretch gaps`` keeps the search latency and stretches only the gaps.

Writes ``{"config": {...}, "results": [...]}`` (eval.metrics.result_row entries,
plus diagnostics) and prints a table with P50/P99 speedups over non-streaming.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

DEFAULT_SCHEDULERS = "fcfs,lcas,mcps,default,ours"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sim", help="simulate schedulers on a workload (discrete events)")
    p.add_argument("--workload", required=True, help="crawler | anns | FILE.jsonl")
    p.add_argument("--qps", type=float, default=4.0)
    p.add_argument("--delay-multiplier", type=float, default=1.0,
                   help="stretch the trace's delays by this factor (memory pressure; see --stretch)")
    p.add_argument("--schedulers", default=DEFAULT_SCHEDULERS, help="comma-separated policies")
    p.add_argument("--preemption", default="cost", choices=["cost", "recompute", "swap"])
    p.add_argument("--artifact-cost-rule", action="store_true",
                   help="evaluate the cost rule at the scheduled request's size (artifact)")
    p.add_argument("--hardware", default="h200-tp2-llama3-8b", help="profile name or JSON path")
    p.add_argument("--num-queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-budget", type=int, default=None,
                   help="tokens per step (default: 2048 crawler, 8192 anns, as the paper)")
    p.add_argument("--kv-capacity-tokens", type=int, default=None,
                   help="override the profile's KV pool size (tokens)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--stretch", choices=["all", "gaps"], default="all",
                   help="which delays --delay-multiplier stretches: 'all' (default) every "
                   "delay of a trace, the search latency before the first chunk included, "
                   "as the paper's ANNS driver does; 'gaps' only the gaps between chunks")
    p.add_argument("--no-baseline", action="store_true", help="skip the non-streaming run")
    p.add_argument("--json", dest="json_out", default=None, help="write results here")
    p.add_argument("--plot", default=None, help="directory for TTFT CCDF plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module="sglang")
    from eval.metrics import format_table, speedups
    from eval.sim import SimConfig, row, simulate
    from eval.workloads import WORKLOADS, load_workload
    from scheduler.cost_model import CostModel

    kw = {}
    if args.workload in WORKLOADS:
        kw = dict(qps=args.qps, num_queries=args.num_queries, seed=args.seed,
                  delay_multiplier=args.delay_multiplier)
    queries = load_workload(args.workload, **kw)
    if args.workload not in WORKLOADS:
        queries = queries[: args.num_queries]
    if args.workload in WORKLOADS:  # the generator stretched the gaps; "all" adds the rest
        from eval.sim import stretch_delays

        queries = stretch_delays(queries, args.delay_multiplier, args.stretch)
    budget = args.token_budget or (8192 if queries and queries[0].mode == "update" else 2048)
    cm = CostModel.load(args.hardware)
    names = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    runs = [] if args.no_baseline else [("fcfs", False)]
    runs += [(n, True) for n in names]
    results, raw = [], {}
    for policy, streaming in runs:
        cfg = SimConfig(policy=policy, preemption=args.preemption, hardware=args.hardware,
                        token_budget=budget, artifact_cost_rule=args.artifact_cost_rule,
                        streaming=streaming, kv_capacity_tokens=args.kv_capacity_tokens,
                        page_size=args.page_size)
        t0 = time.perf_counter()
        res = simulate(queries, cfg, cm, progress=not args.quiet)
        r = row(res)
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        raw[cfg.label()] = res.ttft_s
    config = {
        "workload": args.workload, "qps": args.qps, "delay_multiplier": args.delay_multiplier,
        "num_queries": len(queries), "seed": args.seed, "preemption": args.preemption,
        "artifact_cost_rule": args.artifact_cost_rule, "hardware": args.hardware,
        "hardware_fit": cm.describe(), "token_budget": budget,
        "kv_capacity_tokens": args.kv_capacity_tokens or cm.kv_capacity_tokens,
        "page_size": args.page_size, "stretch": args.stretch,
    }
    out = {"config": config, "results": results}
    base = next((r for r in results if not r["streaming"]), None)
    table = []
    for r in results:
        sp = speedups(base["ttft_s"], r["ttft_s"]) if base else {}  # type: ignore[arg-type]
        t = r["ttft_s"]
        table.append({
            "scheduler": r["scheduler"], "p50_s": t["p50"], "p99_s": t["p99"],  # type: ignore[index]
            "x_p50": sp.get("p50", math.nan), "x_p99": sp.get("p99", math.nan),
            "completion_s": r["completion_time_s"],
            "recompute": r["preemptions"]["recompute"],  # type: ignore[index]
            "swap": r["preemptions"]["swap"],  # type: ignore[index]
            "invalidated": r["tokens_invalidated"], "wall_s": r["wall_s"],
        })
    print(format_table(table, list(table[0]) if table else ["scheduler"]))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        from eval.plots import plot_ttft_ccdf

        Path(args.plot).mkdir(parents=True, exist_ok=True)
        name = Path(args.workload).stem + f"-qps{args.qps:g}-x{args.delay_multiplier:g}"
        plot_ttft_ccdf(raw, Path(args.plot) / f"ttft-ccdf-{name}.png")
    return 0
