"""`stream2llm validate`: does the simulator predict the real engine on this machine?

    stream2llm validate [--engine sglang|reference] [--out out/validate] [--num-queries 30]
        [--profile FILE]

``--engine sglang`` (the default) validates SGLang's own engine with our plugin:
the profile is `stream2llm profile`'s SGLang one (srt_ext/cli/profile_sglang.py:
its server's prefill and decode, swaps through its KV pool, the HTTP legs as
round trips less SGLang's own latency), the server is ``SGLangServer`` (policy
fcfs, preemption cost with that profile as its cost model, ``--chunked-prefill-size``
the budget), and the replay's TTFT is the client's. SGLang's scheduler logs no
steps and stamps no legs, so the calibration pass below only warms the server
there (no engine-speed factor, no per-leg table). ``--engine reference`` runs the
description below on our retiring engine.

One run, one machine, one set of conditions: (1) ``stream2llm profile``
measures the forward-pass curves and the fixed costs of the embedded tiny model
here (unless ``--profile`` reuses a file); (2) each case's trace
(eval/validate_trace.py: crawler and ANNS at two loads each, and a crawler run
on a KV pool small enough to preempt) is replayed through ``stream2llm serve``
(a child process, scheduler fcfs, preemption cost, the same profile as its cost
model), non-streaming and streaming, with the prefix cache flushed before each
pass and the order alternating between cases; each server first gets an
unmeasured warm-up and an unmeasured calibration pass, which prices the HTTP terms
and the engine's current speed (eval/validate_calibration.py); (3) the same trace
is simulated with that profile and the server's settings (page 1, host pool 4x,
budget, clients that await each chunk's reply). It prints P50/P95/P99 TTFT
(streaming and not), preemptions and completion time side by side, with pass/fail
per cell (percentiles within 20 %, P99 within 30 %, completion within 5 %), then
where each TTFT went (eval/validate_legs.py), and draws measured-vs-simulated TTFT
CDFs. Exit status 1 if any cell fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from eval.validate_calibration import (
    add_http_terms,
    add_pass_terms,
    engine_speed,
    logged_steps,
    slowed,
)
from eval.validate_legs import legs_rows
from eval.validate_report import COLS, TOL, Side, compare, plot_cdfs
from eval.validate_trace import Case
from srt_ext.engines.reference.model_store import TINY_MODEL

TOKEN_BUDGET = 512
WARMUP_SCALE = 0.25  # the warm-up replays the first case 4x faster (unmeasured)
CALIBRATION_QUERIES = 12  # queries of the calibration pass (HTTP terms, engine speed)
CASES = (
    Case("crawler-qps1", "crawler", 1.0),
    Case("crawler-qps3", "crawler", 3.0),
    Case("anns-qps1", "anns", 1.0, token_scale=0.05),
    Case("anns-qps2", "anns", 2.0, token_scale=0.05),
    Case("crawler-pressure", "crawler", 2.0, delay_multiplier=3.0, kv_capacity_tokens=3072),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("validate", help="simulator vs the real server on this machine")
    p.add_argument("--out", default="out/validate", help="directory for JSON, profile, plot")
    p.add_argument("--num-queries", type=int, default=30, help="queries per case")
    p.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated")
    p.add_argument("--profile", default=None,
                   help="reuse this profile JSON's engine curves (default: measure them); the "
                   "HTTP terms are measured on the validation's server unless it has them "
                   "(reference engine; SGLang's profile brings its own)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (profile and server)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker-cpu", type=int, default=None,
                   help="CPU for the engine (profile and server worker); the API room and the "
                   "client get the others (default: the last CPU when there are two or more; "
                   "-1: no pinning)")
    p.add_argument("--calibrate", choices=["none", "cross-pass"], default="none",
                   help="cross-pass: also simulate each mode with the engine slowed by what "
                   "the other mode's pass measured (load drift on a shared machine)")
    p.add_argument("--speed", choices=["pass", "none"], default="pass",
                   help="pass (default): scale the profile's engine by the speed the "
                   "unmeasured calibration pass ran at (measured / predicted forward time "
                   "of its logged steps; this VM's speed drifts between the profile and "
                   "the replays); none: the profile as measured")
    p.add_argument("--engine", choices=("sglang", "reference"), default="sglang",
                   help="sglang (default): SGLang's own server with our plugin; reference: "
                   "our retiring engine (its worker's step log and per-leg stamps)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def placement(worker_cpu: int | None) -> tuple[int | None, set[int]]:
    """(the engine's CPU, the CPUs for everything else). Why: on a CPU-only box the
    HTTP path and the client otherwise share the engine's core and slow its steps,
    which a GPU server does not see; with a core of its own the engine runs the
    steps the profile timed (docs/performance.md, "Simulator vs the real engine")."""
    mine = os.sched_getaffinity(0)
    if worker_cpu == -1 or (worker_cpu is None and len(mine) < 2):
        return None, set()
    cpu = max(mine) if worker_cpu is None else worker_cpu
    if cpu not in mine:
        raise SystemExit(f"stream2llm validate: --worker-cpu {cpu} is not one of {sorted(mine)}")
    return cpu, (mine - {cpu}) or mine


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run this process on ``cpu`` for the block (no-op for None)."""
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def step_summary(log: Path, prof: Path) -> str:
    """The served steps against the step model (eval/step_residuals.py), one line."""
    from eval.step_residuals import load_steps, totals
    from scheduler.cost_model import CostModel

    if not log.exists():
        return "no step log (the worker wrote none)"
    meas, pred, n = totals(load_steps(log), CostModel.load(prof))
    return (f"served steps: {n}, forward {meas:.3f} s measured vs {pred:.3f} s predicted by the "
            f"profile's step model ({100 * (pred - meas) / meas:+.1f}%)") if meas else "no steps"


def profile_engine(out: Path, threads: int, engine: str = "reference") -> Path:
    """`stream2llm profile` for the tiny model, here and now. Reference engine: its
    engine part (the HTTP terms come from the validation's own server,
    ``add_http_terms``); SGLang's engine: all of it, on a server of its own."""
    from srt_ext.cli.profile import measure, write_profile

    if engine == "sglang":
        from srt_ext.cli.profile_sglang import measure_sglang

        ns = argparse.Namespace(model_path=TINY_MODEL, dtype="auto", device="cpu", max_tokens=2048,
                                repeats=5, warmup=1, decode_batches="1,4", kv_capacity_tokens=16384,
                                name="validate-sglang-cpu", out=str(out), threads=threads,
                                skip_http=False, quiet=True)  # fmt: skip
        write_profile(measure_sglang(ns), out)
        return out

    ns = argparse.Namespace(model_path=TINY_MODEL, dtype="auto", device="cpu", max_tokens=2048,
                            repeats=5, warmup=1, steps=192,
                            decode_batches="1,4", kv_capacity_tokens=16384,
                            name="validate-cpu", out=str(out), threads=threads, skip_http=True)  # fmt: skip
    write_profile(measure(ns), out)
    return out


@contextmanager
def served(engine: str, pool: int, threads: int, cpu: int | None, prof: Path,
           quiet: bool) -> Iterator[Any]:  # fmt: skip
    """The server the cases replay against (``.url``): SGLang's own with our plugin, or
    the reference one; scheduler fcfs, preemption cost with ``prof`` as the cost model,
    the token budget as the prefill chunk, on ``cpu`` when given."""
    cpus = (cpu,) if cpu is not None else ()
    if engine == "sglang":
        from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

        cfg = SGLangServerConfig(model_path=TINY_MODEL, max_total_tokens=pool, threads=threads,
                                 chunked_prefill_size=TOKEN_BUDGET, policy="fcfs",
                                 preemption="cost", cost_model=str(prof.resolve()),
                                 worker_cpus=cpus)  # fmt: skip
        with SGLangServer(cfg).start(progress=not quiet) as srv:
            yield srv
        return
    from srt_ext.launch import launch_server

    with launch_server(subprocess=True, model_path=TINY_MODEL, max_total_tokens=pool,
                       threads=threads, cpus=cpus, cost_model=str(prof.resolve()),
                       token_budget=TOKEN_BUDGET, scheduler="fcfs", preemption="cost") as h:  # fmt: skip
        yield h


def measured(url: str, text_qs: list[Any], modes: list[str],
             time_scale: float = 1.0) -> dict[str, Side]:  # fmt: skip
    from eval.replay import run_passes

    ns = argparse.Namespace(max_new_tokens=1, concurrency_limit=10_000, request_timeout=600.0,
                            api_key=None, time_scale=time_scale, flush=True, rounds=1, quiet=True)  # fmt: skip
    passes = run_passes(url, text_qs, modes, ns)
    out = {}
    for mode, p in passes.items():
        good = [o for o in p.outs if o.error is None and o.ttft_s is not None]
        pre = sum(p.server["preemptions"].values())
        legs = {o.qid: o.legs for o in good if o.legs}
        out[mode] = Side([o.ttft_s for o in good], p.completion_s, pre,  # type: ignore[misc]
                         len(p.outs) - len(good), p.server.get("engine_step_s", 0.0),
                         int(p.server.get("steps", 0)), legs_s=legs)  # fmt: skip
    return out


def cross_calibrated(sim_qs: list[Any], case: Case, cm: Any, meas: dict[str, Side],
                     raw: dict[str, Side]) -> dict[str, Side]:  # fmt: skip
    """Each mode simulated with the engine slowed by what the *other* mode's pass measured
    (its worker step time / its simulated busy time): the machine's load drifts between
    the profile and a pass, and no pass is predicted with its own timings."""
    out = {}
    for mode, other in (("non-streaming", "streaming"), ("streaming", "non-streaming")):
        factor = meas[other].busy_s / raw[other].busy_s if raw[other].busy_s > 0 else 1.0
        out[mode] = simulated(sim_qs, case, slowed(cm, factor), modes=(mode,))[mode]
        out[mode].factor = factor
    return out


def simulated(sim_qs: list[Any], case: Case, cm: Any,
              modes: tuple[str, ...] = ("non-streaming", "streaming")) -> dict[str, Side]:  # fmt: skip
    from eval.sim import SimConfig, simulate

    out = {}
    for mode in modes:
        cfg = SimConfig(policy="fcfs", preemption="cost", token_budget=TOKEN_BUDGET,
                        streaming=mode == "streaming", kv_capacity_tokens=case.kv_capacity_tokens,
                        page_size=1, host_factor=4.0, client_awaits_acks=True)  # fmt: skip
        r = simulate(sim_qs, cfg, cm)
        out[mode] = Side(r.ttft_s, r.completion_time_s, sum(r.preemptions.values()),
                         r.unfinished + r.rejected, r.busy_s, r.steps, legs_s=r.legs_s)  # fmt: skip
    return out


def run(args: argparse.Namespace) -> int:
    from eval.metrics import format_table
    from eval.validate_trace import build
    from scheduler.cost_model import CostModel
    from srt_ext.api.tokenizer import TokenizerRoom
    from srt_ext.engines.reference.tiny_model import ensure_tiny_model
    names = [c for c in args.cases.split(",") if c]
    known = {c.name: c for c in CASES}
    bad = [c for c in names if c not in known]
    if bad or args.num_queries < 1:
        print(f"stream2llm validate: unknown cases {bad} (known: {sorted(known)}) or "
              f"--num-queries < 1", file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = getattr(args, "engine", "reference")
    if engine == "sglang" and args.calibrate == "cross-pass":
        print("stream2llm validate: --calibrate cross-pass needs the engine's own step times, "
              "which SGLang's scheduler does not report (use --engine reference)",
              file=sys.stderr)  # fmt: skip
        return 2
    t_start = time.time()
    engine_cpu, rest = placement(args.worker_cpu)
    prof = out / "profile.json"
    if args.profile:  # a copy: the HTTP terms measured below are added to it, not to the source
        prof.write_text(Path(args.profile).read_text())
    else:
        with pinned(engine_cpu):  # the profile is taken where the worker will run
            profile_engine(prof, args.threads, engine)
    if rest:
        os.sched_setaffinity(0, rest)  # this client and the server's API room (inherited)
    steps_log = out / "steps.jsonl"
    steps_log.unlink(missing_ok=True)
    if engine == "reference":
        os.environ["STREAM2LLM_STEP_LOG"] = str(steps_log)  # read by the server's worker
    tok = TokenizerRoom(ensure_tiny_model())
    cases = [replace(known[n], num_queries=args.num_queries, seed=args.seed) for n in names]
    results: dict[str, dict[str, dict[str, Side]]] = {}
    rows: list[dict[str, Any]] = []
    leg_rows: list[dict[str, Any]] = []
    speeds: list[float] = []
    for pool in sorted({c.kv_capacity_tokens for c in cases}, reverse=True):
        with served(engine, pool, args.threads, engine_cpu, prof, args.quiet) as h:
            fresh = engine == "reference" and "chunk_s" not in json.loads(
                prof.read_text()).get("fixed", {})
            if fresh:
                add_http_terms(prof, h.url)  # the preemption rule reads only the curves
            on_pool = [c for c in cases if c.kv_capacity_tokens == pool]
            # warm-up, not measured: a fresh server's first minute ran the same queries
            # 1.3-2x slower than later (crawler QPS 1 vs QPS 3, identical inputs), a
            # start-up transient the simulator does not model (docs/performance.md)
            both = ["non-streaming", "streaming"]
            measured(h.url, build(on_pool[0], tok)[0], both, WARMUP_SCALE)
            # then a calibration pass at real speed on other queries: it prices the HTTP
            # terms (first server) and, with --speed pass, how fast the engine runs now
            other = replace(on_pool[0], num_queries=CALIBRATION_QUERIES, seed=args.seed + 1)
            mark = logged_steps(steps_log)
            cal = measured(h.url, build(other, tok)[0], both)
            if fresh:
                add_pass_terms(prof, cal, args.quiet)
            cm = CostModel.load(prof)
            speed, n = engine_speed(steps_log, mark, cm)  # (1.0, 0) without a step log
            if not args.quiet and engine == "sglang":
                print("engine speed: not measured on SGLang's engine (its scheduler logs no "
                      "steps); the profile as measured", file=sys.stderr)  # fmt: skip
            elif not args.quiet:
                print(f"engine speed in the calibration pass: {speed:.3f}x the profile's "
                      f"({n} steps){'' if args.speed == 'pass' else ', not applied'}",
                      file=sys.stderr)  # fmt: skip
            if args.speed == "pass":
                cm = slowed(cm, speed)
            speeds.append(speed)
            for i, case in enumerate(on_pool):
                text_qs, sim_qs = build(case, tok)
                modes = ["non-streaming", "streaming"][:: 1 if i % 2 == 0 else -1]
                if not args.quiet:
                    print(f"[{time.time() - t_start:5.0f} s] {case.name}: replay {modes}",
                          file=sys.stderr)  # fmt: skip
                meas = measured(h.url, text_qs, modes)
                sim = simulated(sim_qs, case, cm)
                results[case.name] = {"measured": meas, "simulated": sim}
                case_rows = compare(case.name, meas, sim)
                leg_rows += legs_rows(case.name, meas, sim)
                if args.calibrate == "cross-pass":
                    cal = cross_calibrated(sim_qs, case, cm, meas, sim)
                    results[case.name]["calibrated"] = cal
                    extra = compare(case.name + " (x-cal)", meas, cal)
                    for mode, side in cal.items():
                        extra.append({"case": case.name + " (x-cal)", "mode": mode,
                                      "metric": "engine slow-down", "measured": None,
                                      "simulated": side.factor, "err_%": None, "tol_%": None,
                                      "verdict": "-"})  # fmt: skip
                    case_rows += extra
                rows += case_rows
                if not args.quiet:  # each case as it ends: a long run shows its progress
                    print(format_table(case_rows, COLS), file=sys.stderr)
    print(format_table(rows, COLS))
    if leg_rows:
        print("\nwhere a TTFT goes (medians, ms)")
        print(format_table(leg_rows, list(leg_rows[0])))
    if engine == "reference":
        print(step_summary(steps_log, prof))
    fails = sum(r["verdict"] == "FAIL" for r in rows)
    print(f"{fails} of {sum(r['verdict'] != '-' for r in rows)} cells fail; "
          f"{time.time() - t_start:.0f} s")
    plot = plot_cdfs(results, out / "validate-cdf.png")
    (out / "validate.json").write_text(json.dumps({
        "engine": engine, "profile": str(prof), "cases": [asdict(c) for c in cases], "tolerance": TOL,
        "token_budget": TOKEN_BUDGET, "rows": rows, "legs": leg_rows,
        "engine_speed": {"applied": args.speed == "pass", "per_server": speeds},
        "ttft_s": {n: {k: {m: asdict(s) for m, s in v.items()} for k, v in r.items()}
                   for n, r in results.items()},
        "wall_s": round(time.time() - t_start, 1), "plot": str(plot),
    }, indent=1) + "\n")  # fmt: skip
    return 1 if fails else 0
