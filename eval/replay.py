"""`stream2llm replay`: replay a workload against a live server, streaming vs not.

    stream2llm replay --url http://127.0.0.1:30000 --workload crawler|anns|FILE.jsonl \\
        --qps 2 --num-queries 8 --time-scale 0.1 [--rounds 2] --json out.json [--plot DIR]

Each query is replayed once per mode and round. Passes are fair to the
baseline: the server's prefix cache is flushed (``/flush_cache``) before every
pass, so no pass reuses what another left cached, and the order of the modes
alternates between rounds (round 0 non-streaming first, round 1 streaming
first, ...); each row pools its mode's rounds (completion time: their mean).

* streaming: the stream opens with the first chunk at ``arrival + t0*X`` and
  every later chunk is sent at its own time scaled by X (append or update);
* non-streaming: the whole final input is sent once retrieval has ended
  (``/generate`` for one-token requests, else one final ``/v1/streams`` open).

The server is SGLang's own with our plugin (``stream2llm serve``, the default
engine); the reference server answers the same routes. TTFT is measured by the
client from sending the final input to receiving the first output token (the
paper's definition); the server's own ``meta_info.ttft_s`` is recorded beside it
where the server reports one (a stream's result does, final chunk -> first token;
SGLang's ``/generate`` does not, so one-token one-shots have none). The output has `stream2llm sim`'s JSON schema
(``eval.metrics.result_row``), so a measured run and a simulated one compare
field by field. Only loopback URLs are accepted, the query count is bounded by
``--num-queries`` and every request by ``--request-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eval.replay_query import Outcome, fit_context, replay_one

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("replay", help="replay a workload against a live server (REST)")
    p.add_argument("--url", required=True, help="server URL (loopback only)")
    p.add_argument("--workload", required=True, help="crawler | anns | FILE.jsonl")
    p.add_argument("--qps", type=float, default=1.0)
    p.add_argument("--num-queries", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every trace time by X")
    p.add_argument("--max-new-tokens", type=int, default=1)
    p.add_argument("--concurrency-limit", type=int, default=32, help="queries in flight at once")
    p.add_argument("--modes", default="non-streaming,streaming")
    p.add_argument("--rounds", type=int, default=2,
                   help="passes per mode; the mode order alternates between rounds")
    p.add_argument("--no-flush", dest="flush", action="store_false",
                   help="do not flush the prefix cache before each pass (unfair: a later "
                   "pass reuses the earlier one's prefixes)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds per query")
    p.add_argument("--label", default="streaming", help="name of the streaming row")
    p.add_argument(
        "--max-input-words",
        type=int,
        default=None,
        help="cut every input to N words (default: 3/4 of the server's context)",
    )
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", dest="json_out", default=None, help="write results here")
    p.add_argument("--plot", default=None, help="directory for TTFT CCDF plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


async def replay(url: str, queries: list[Any], streaming: bool, args: argparse.Namespace,
                 progress: Any = None) -> tuple[list[Outcome], dict[str, Any], float]:  # fmt: skip
    """All queries in one mode: (outcomes, server stats delta, completion seconds)."""
    from srt_ext.client.rest import AsyncClient

    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "ignore_eos": True}
    sem = asyncio.Semaphore(args.concurrency_limit)
    async with AsyncClient(url, api_key=args.api_key, timeout=args.request_timeout) as client:
        if getattr(args, "flush", True):
            await client.flush_cache()  # nothing cached by an earlier pass may be reused
        before = await client.stats()
        t0 = time.perf_counter() + 0.05

        async def one(q: Any) -> Outcome:
            await asyncio.sleep(max(0.0, t0 + q.arrival_s * args.time_scale - time.perf_counter()))
            async with sem:
                try:
                    return await asyncio.wait_for(
                        replay_one(client, q, streaming, t0, args.time_scale, sampling),
                        args.request_timeout,
                    )
                except Exception as exc:  # noqa: BLE001  (recorded per query, run goes on)
                    return Outcome(q.qid, error=f"{type(exc).__name__}: {exc}")
                finally:
                    if progress is not None:
                        progress.update(1)

        outs = await asyncio.gather(*(one(q) for q in queries))
        after = await client.stats()
    delta = {
        k: after.get("preemptions", {}).get(k, 0) - before.get("preemptions", {}).get(k, 0)
        for k in ("recompute", "swap")
    }
    inval = after.get("tokens_invalidated", 0) - before.get("tokens_invalidated", 0)
    end = max((o.done_at for o in outs if o.error is None), default=t0)
    engine = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 6)
              for k in ("engine_forward_s", "engine_step_s", "steps")}  # fmt: skip
    return list(outs), {"preemptions": delta, "tokens_invalidated": inval, **engine}, end - t0


@dataclass
class Passes:
    """One mode's passes pooled: outcomes, server counters summed, mean completion."""

    outs: list[Outcome] = field(default_factory=list)
    server: dict[str, Any] = field(
        default_factory=lambda: {"preemptions": {"recompute": 0, "swap": 0},
                                 "tokens_invalidated": 0})  # fmt: skip
    completions: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def completion_s(self) -> float:
        return sum(self.completions) / len(self.completions) if self.completions else 0.0


def mode_order(modes: list[str], rounds: int) -> list[str]:
    """Passes in run order: the mode order is reversed every other round, so neither
    mode always runs first on a freshly started (or freshly flushed) server."""
    out: list[str] = []
    for r in range(rounds):
        out += modes if r % 2 == 0 else modes[::-1]
    return out


def run_passes(url: str, queries: list[Any], modes: list[str],
               args: argparse.Namespace) -> dict[str, Passes]:  # fmt: skip
    """Every pass of every mode (``mode_order``), the cache flushed before each."""
    res = {mode: Passes() for mode in modes}
    for mode in mode_order(modes, getattr(args, "rounds", 1)):
        streaming = mode == "streaming"
        bar = None
        if not getattr(args, "quiet", True):
            from tqdm import tqdm

            bar = tqdm(total=len(queries), desc=mode, unit="q", leave=False)
        t = time.perf_counter()
        outs, server, completion = asyncio.run(replay(url, queries, streaming, args, bar))
        if bar is not None:
            bar.close()
        p = res[mode]
        p.outs += outs
        for k, v in server["preemptions"].items():
            p.server["preemptions"][k] += v
        for k in ("tokens_invalidated", "engine_forward_s", "engine_step_s", "steps"):
            p.server[k] = p.server.get(k, 0) + server.get(k, 0)
        p.completions.append(completion)
        p.wall_s += time.perf_counter() - t
    return res


def row(label: str, streaming: bool, outs: list[Outcome], server: dict[str, Any],
        completion_s: float, wall_s: float) -> dict[str, Any]:  # fmt: skip
    from eval.metrics import PERCENTILE_KEYS, percentiles, result_row

    ok = [o for o in outs if o.error is None]
    r = result_row(label, streaming, [o.ttft_s for o in ok], [o.ttft_from_arrival_s for o in ok],  # type: ignore[misc]  # both set on every outcome without an error
                   completion_s, server["preemptions"], server["tokens_invalidated"])  # fmt: skip
    r["server_ttft_s"] = percentiles(o.server_ttft_s for o in ok if o.server_ttft_s is not None)
    r["requests"], r["unfinished"] = len(outs), len(outs) - len(ok)
    r["errors"] = sorted({o.error for o in outs if o.error})[:5]
    r["wall_s"] = round(wall_s, 2)
    if r["unfinished"]:
        r["ttft_s"] = {k: math.nan for k in PERCENTILE_KEYS}  # as `sim`: incomplete is not fast
    return r


def run(args: argparse.Namespace) -> int:
    from eval.metrics import format_table, speedups
    from eval.workloads import WORKLOADS, load_workload

    host = urlparse(args.url).hostname
    if host not in LOOPBACK:
        print(f"stream2llm replay: {args.url} is not loopback; refusing", file=sys.stderr)
        return 2
    if not (0 < args.num_queries <= 10000) or args.time_scale <= 0:
        print(
            "stream2llm replay: need 0 < --num-queries <= 10000, --time-scale > 0", file=sys.stderr
        )
        return 2
    if args.workload in WORKLOADS:
        queries = load_workload(args.workload, qps=args.qps, num_queries=args.num_queries,
                                seed=args.seed, max_new_tokens=args.max_new_tokens, text=True)  # fmt: skip
    else:
        queries = load_workload(args.workload)[: args.num_queries]
    limit = args.max_input_words
    if limit is None:
        from srt_ext.client.rest import Client

        with Client(args.url, api_key=args.api_key, timeout=30.0) as c:
            ctx = int(c.stats().get("max_context_tokens", 0) or 0)
        limit = int(0.75 * (ctx - args.max_new_tokens)) if ctx else None
    if limit:
        queries = [fit_context(q, limit) for q in queries]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.rounds < 1:
        print("stream2llm replay: --rounds must be >= 1", file=sys.stderr)
        return 2
    passes = run_passes(args.url, queries, modes, args)
    results, raw = [], {}
    for mode in modes:
        streaming = mode == "streaming"
        label = args.label if streaming else "non-streaming"
        p = passes[mode]
        results.append(row(label, streaming, p.outs, p.server, p.completion_s, p.wall_s))
        raw[label] = [o.ttft_s for o in p.outs if o.ttft_s is not None]
    base = next((r for r in results if not r["streaming"]), None)
    table = []
    for r in results:
        sp = speedups(base["ttft_s"], r["ttft_s"]) if base else {}
        table.append({"mode": r["scheduler"], "p50_s": r["ttft_s"]["p50"], "p99_s": r["ttft_s"]["p99"],
                      "x_p50": sp.get("p50", math.nan), "x_p99": sp.get("p99", math.nan),
                      "server_p50_s": r["server_ttft_s"]["p50"], "completion_s": r["completion_time_s"],
                      "recompute": r["preemptions"]["recompute"], "swap": r["preemptions"]["swap"],
                      "invalidated": r["tokens_invalidated"], "failed": r["unfinished"]})  # fmt: skip
    print(format_table(table, list(table[0]) if table else ["mode"]))
    config = {"workload": args.workload, "qps": args.qps, "num_queries": len(queries),
              "seed": args.seed, "time_scale": args.time_scale, "max_new_tokens": args.max_new_tokens,
              "concurrency_limit": args.concurrency_limit, "url": args.url, "measured": True,
              "max_input_words": limit, "rounds": args.rounds, "flush": args.flush,
              "order": mode_order(modes, args.rounds)}  # fmt: skip
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(
            json.dumps({"config": config, "results": results}, indent=1) + "\n"
        )
    if args.plot:
        from eval.plots import plot_ttft_ccdf

        Path(args.plot).mkdir(parents=True, exist_ok=True)
        name = Path(args.workload).stem + f"-qps{args.qps:g}-x{args.time_scale:g}"
        plot_ttft_ccdf(raw, Path(args.plot) / f"replay-ttft-ccdf-{name}.png")
    return 0 if all(r["unfinished"] == 0 for r in results) else 1
