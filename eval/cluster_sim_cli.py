"""`stream2llm sim-cluster`: streaming vs non-streaming TTFT with R replicas behind a router.

    stream2llm sim-cluster --workload crawler --qps-per-replica 4 --replicas 1,8,64 \\
        --queries-per-replica 40 --policies random,round_robin,least_kv,stream_aware \\
        --hot-share 1 [--kv-capacity-tokens N] [--json out.json]

For each R, scenario (``uniform``; ``hot``: queries worth ``--hot-share`` fair shares
pinned to replica 0, R > 1 only) and routing policy, the same queries are routed and
simulated streaming and non-streaming (eval/cluster_sim.py). Prints one row per
(R, scenario, policy): pooled TTFT percentiles of both, the streaming speedup at
P50/P99, preemptions per 1,000 queries of both, and the busiest replica's share over a
fair share (max_share). Every R simulates the same per-replica window
(``--queries-per-replica`` at ``--qps-per-replica``); small R repeats it with other
seeds until ``--min-queries`` so the P99s rest on similar sample sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sim-cluster", help="simulate R replicas behind routing policies")
    p.add_argument("--workload", default="crawler", choices=("crawler", "anns"))
    p.add_argument("--qps-per-replica", type=float, default=4.0)
    p.add_argument("--delay-multiplier", type=float, default=1.0)
    p.add_argument("--replicas", default="1,8,64", help="comma-separated cluster sizes")
    p.add_argument("--queries-per-replica", type=int, default=40)
    p.add_argument("--min-queries", type=int, default=640,
                   help="small R: repeat the window with other seeds until this many queries")
    p.add_argument("--policies", default="random,round_robin,least_kv,stream_aware")
    p.add_argument("--hot-share", type=float, default=1.0,
                   help="skewed scenario: queries worth this many fair shares are pinned to "
                        "replica 0 (sticky sessions), the rest routed by the policy")
    p.add_argument("--scheduler", default="fcfs", help="each replica's streaming policy")
    p.add_argument("--hardware", default="h200-tp2-llama3-8b")
    p.add_argument("--token-budget", type=int, default=None)
    p.add_argument("--kv-capacity-tokens", type=int, default=None,
                   help="each replica's KV pool (default: the hardware profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module="sglang")
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)  # the KV pool's free-list updates: 10x faster on one thread

    from eval.cluster_sim import POLICIES, ClusterConfig, ClusterResult, pooled, simulate_cluster
    from eval.metrics import format_table, percentiles
    from eval.sim import SimConfig
    from eval.workloads import load_workload
    from scheduler.cost_model import CostModel

    policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise SystemExit(f"stream2llm sim-cluster: unknown policies {bad} (one of {POLICIES})")
    sizes = [int(r) for r in args.replicas.split(",")]
    cm = CostModel.load(args.hardware)
    budget = args.token_budget or (8192 if args.workload == "anns" else 2048)
    plan = [(r, sc) for r in sizes for sc in (("uniform", "hot") if r > 1 else ("uniform",))]
    rows, raw = [], []
    bar = tqdm(total=len(plan) * len(policies) * 2, desc="sim-cluster", disable=args.quiet)
    for r, scenario in plan:
        hot = min(1.0, args.hot_share / r) if scenario == "hot" else 0.0
        # the same per-replica window at every R; small R repeats it with other seeds
        # (pooled) so every row has about --min-queries queries behind its P99
        n = args.queries_per_replica * r
        trials = max(1, -(-args.min_queries // n))
        workloads = [load_workload(args.workload, qps=args.qps_per_replica * r, num_queries=n,
                                   seed=args.seed + k, delay_multiplier=args.delay_multiplier)
                     for k in range(trials)]  # fmt: skip
        for policy in policies if r > 1 else policies[:1]:  # one replica: no routing
            out: dict[bool, ClusterResult] = {}
            for streaming in (False, True):
                sim = SimConfig(policy=args.scheduler, hardware=args.hardware, token_budget=budget,
                                streaming=streaming, kv_capacity_tokens=args.kv_capacity_tokens)  # fmt: skip
                out[streaming] = pooled([simulate_cluster(qs, ClusterConfig(r, policy, hot,
                                                                            args.seed + k, sim), cm)
                                         for k, qs in enumerate(workloads)])  # fmt: skip
                bar.update(1 if r > 1 else len(policies))
            s, ns = out[True], out[False]
            ps, pn = percentiles(s.ttft_s), percentiles(ns.ttft_s)
            per_k = 1000 / max(len(s.ttft_s), 1)
            rows.append({
                "R": r, "scenario": scenario, "policy": policy if r > 1 else "(any)",
                "queries": len(s.ttft_s),
                "stream_p50_s": ps["p50"], "stream_p99_s": ps["p99"],
                "nonstream_p50_s": pn["p50"], "nonstream_p99_s": pn["p99"],
                "x_p50": _ratio(pn["p50"], ps["p50"]), "x_p99": _ratio(pn["p99"], ps["p99"]),
                "preempt_per_1k_stream": round(sum(s.preemptions.values()) * per_k, 1),
                "preempt_per_1k_nonstream": round(sum(ns.preemptions.values()) * per_k, 1),
                "max_share": round(max(s.per_replica) * r / max(sum(s.per_replica), 1), 2),
                "unfinished": s.unfinished + ns.unfinished,
            })  # fmt: skip
            raw.append({"R": r, "scenario": scenario, "policy": policy, "trials": trials,
                        "streaming": {"ttft": ps, "preemptions": s.preemptions},
                        "non_streaming": {"ttft": pn, "preemptions": ns.preemptions}})  # fmt: skip
    bar.close()
    print(format_table(rows, list(rows[0])))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        cfg_out = {k: v for k, v in vars(args).items() if k != "func"}
        Path(args.json_out).write_text(json.dumps({"config": cfg_out, "results": raw}, indent=1))
    return 0


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b and not math.isnan(a) and not math.isnan(b) else math.nan
