"""The simulator: deterministic, streaming beats non-streaming, pressure handled, CLI."""

from __future__ import annotations

import argparse
import json

import pytest

from eval.sim import SimConfig, non_streaming, simulate, stretch_first
from eval.workloads import generate


@pytest.fixture(scope="module")
def crawler():
    return generate("crawler", qps=4, num_queries=60, seed=3)


def test_deterministic_for_a_seed(crawler) -> None:
    a = simulate(crawler, SimConfig(policy="fcfs"))
    b = simulate(generate("crawler", qps=4, num_queries=60, seed=3), SimConfig(policy="fcfs"))
    assert a.ttft_s == b.ttft_s and a.completion_time_s == b.completion_time_s
    assert a.unfinished == 0 and len(a.ttft_s) == 60


def test_streaming_beats_non_streaming_on_crawler(crawler) -> None:
    ns = simulate(crawler, SimConfig(policy="fcfs", streaming=False))
    for policy in ("fcfs", "ours"):
        s = simulate(crawler, SimConfig(policy=policy))
        p50 = sorted(s.ttft_s)[len(s.ttft_s) // 2]
        ns50 = sorted(ns.ttft_s)[len(ns.ttft_s) // 2]
        assert p50 * 3 < ns50, (policy, p50, ns50)
        assert s.completion_time_s <= 1.01 * ns.completion_time_s  # no throughput loss


@pytest.mark.parametrize("preemption", ["recompute", "swap", "cost"])
@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_memory_pressure_preempts_and_finishes(workload: str, preemption: str) -> None:
    # ANNS finals repeat their previous version (no new work), so it needs more load
    qps, mult = (2, 5) if workload == "crawler" else (3, 10)
    qs = generate(workload, qps=qps, num_queries=25, seed=1, delay_multiplier=mult)
    cfg = SimConfig(policy="ours", preemption=preemption, kv_capacity_tokens=48_000,
                    token_budget=4096)
    r = simulate(qs, cfg)
    assert r.unfinished == 0 and len(r.ttft_s) + r.rejected == 25 and r.rejected <= 2
    assert sum(r.preemptions.values()) > 0
    assert min(r.ttft_s) >= 0.0
    if preemption == "recompute":
        assert r.preemptions["swap"] == 0
    if preemption == "swap":  # falls back to recompute only when the host pool is full
        assert r.preemptions["swap"] > r.preemptions["recompute"]


def test_trace_transforms(crawler) -> None:
    q = crawler[0]
    ns = non_streaming(q)
    assert len(ns.chunks) == 1 and ns.chunks[0].final
    assert ns.chunks[0].token_ids == q.final_token_ids() and ns.retrieval_s == q.retrieval_s
    st = stretch_first(q, 3.0)
    assert st.chunks[0].t_s == pytest.approx(3 * q.chunks[0].t_s)
    assert st.retrieval_s - st.chunks[0].t_s == pytest.approx(q.retrieval_s - q.chunks[0].t_s)


def test_cli_writes_the_results_json(tmp_path, capsys) -> None:
    from eval import sim_cli

    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "r.json"
    args = parser.parse_args(["sim", "--workload", "anns", "--qps", "2", "--num-queries", "8",
                              "--schedulers", "fcfs,default", "--json", str(out), "--quiet"])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"config", "results"}
    assert [(r["scheduler"], r["streaming"]) for r in data["results"]] == [
        ("non-streaming", False), ("non-streaming-ours", False), ("fcfs", True),
        ("default", True)]
    r = data["results"][1]
    assert set(r["ttft_s"]) == {"p50", "p95", "p99", "p999", "mean"}
    assert set(r["preemptions"]) == {"recompute", "swap"}
    for k in ("ttft_from_arrival_s", "completion_time_s", "tokens_invalidated"):
        assert k in r
    assert "x_p99" in capsys.readouterr().out


def test_cli_seeds_report_each_seed_and_the_spread(tmp_path, capsys) -> None:
    from eval import sim_cli

    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "r.json"
    args = parser.parse_args(["sim", "--workload", "crawler", "--qps", "4", "--num-queries",
                              "12", "--schedulers", "ours", "--seeds", "1,2", "--json",
                              str(out), "--quiet"])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["config"]["seeds"] == [1, 2] and set(data["per_seed"]) == {"1", "2"}
    # different seeds are different traces
    p = [data["per_seed"][s][0]["ttft_s"]["p50"] for s in ("1", "2")]
    assert p[0] != p[1]
    ours = next(r for r in data["summary"] if r["scheduler"] == "ours")
    lo, med, hi = (float(x) for x in ours["x_p99"].split(" / "))
    assert lo <= med <= hi
    assert "spread over seeds 1,2" in capsys.readouterr().out
    bad = parser.parse_args(["sim", "--workload", "crawler", "--seeds", "1,x", "--quiet"])
    with pytest.raises(SystemExit, match="--seeds"):
        bad.func(bad)


def test_non_streaming_in_ours_order_differs_from_fcfs_only_in_order() -> None:
    """The ours-ordered baseline serves the same whole inputs (same work, same
    completion), but shortest-first: its P50 is no worse than FCFS's under load."""
    qs = generate("anns", qps=3, num_queries=80, seed=2)
    fcfs = simulate(qs, SimConfig(policy="fcfs", streaming=False, token_budget=8192))
    srpt = simulate(qs, SimConfig(policy="ours", streaming=False, token_budget=8192))
    assert srpt.config.label() == "non-streaming-ours"
    assert len(srpt.ttft_s) == len(fcfs.ttft_s) == 80
    assert srpt.tokens_invalidated == 0 and srpt.busy_s == pytest.approx(fcfs.busy_s, rel=0.02)
    assert sorted(srpt.ttft_s)[40] <= sorted(fcfs.ttft_s)[40]
    assert sorted(srpt.ttft_s) != sorted(fcfs.ttft_s)
