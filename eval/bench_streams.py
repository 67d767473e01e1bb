"""`stream2llm bench-streams`: N concurrent append streams, per engine, per KV pool.

    stream2llm bench-streams --engine reference,sglang,stock|all --cases 6x16384,10x3072 \\
        [--chunks 3 --words 70-100 --gap-s 2] [--model-path M] [--seed 0] \\
        [--json OUT] [--plot DIR]
    stream2llm bench-streams --oneshot [--oneshot-rounds 2]      (eval/bench_oneshot.py)

An outside client opens N streams at once; each gets ``--chunks`` passages of the
shipped corpus (``--words`` words each, ``--gap-s`` apart), then a question chunk
marked final (eval/bench_streams_work.py: the same texts on every engine, laid
out with the model's chat template). For every (engine, case) a fresh server
with that pool (``--max-total-tokens``) is started (eval/bench_servers.py):

* ``reference``, ``sglang``: the stream REST API (docs/api.md): open with the
  first chunk, one ``POST .../chunks`` per later chunk, the question final; the
  result is read over SSE from the start;
* ``stock``: stock SGLang, no plugin, default tree, pre-warmed by one-token
  ``/generate`` requests of the cumulative prompt (eval/bench_streams_stock.py).

Per stream: the share of the final input prefilled before the final chunk
(``cached_tokens`` of the final chunk's reply / its ``input_tokens``), TTFT after
the final chunk on the client (final chunk sent -> first token over SSE) and the
server's ``meta_info.ttft_s`` where it reports one. Per case: P50/P95/mean and how
many streams got any prefill. Greedy, ``--max-new-tokens`` (16) on every engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.bench_oneshot import add_oneshot_args, run_oneshot
from eval.bench_servers import ENGINES, ServerSpec, running
from eval.bench_streams_stock import run_stock_stream
from eval.bench_streams_work import StreamRecord, StreamSpec, build_specs, layout_for, sleep_until
from eval.metrics import format_table, percentiles
from eval.plots import plot_timeline, plt
from srt_ext.client.rest import AsyncClient, ServerError, parse_sse_line
from srt_ext.engines.reference.model_store import resolve_model

TARGET_SHARE, TARGET_TTFT_X = 0.9, 1.5  # issue 19: sglang vs the reference engine
WARM_UP_TEXT = " ".join(f"warm-up line {i}." for i in range(60))  # ~300 tokens


@dataclass(frozen=True)
class Case:
    """N streams on a pool of ``pool`` KV tokens."""

    streams: int
    pool: int

    @property
    def name(self) -> str:
        return f"{self.streams}x{self.pool}"


def parse_cases(text: str) -> list[Case]:
    """``"6x16384,10x3072"`` -> cases (streams x pool tokens)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            n, pool = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"case {part!r} is not STREAMSxPOOL") from None
        if n < 1 or pool < 64:
            raise argparse.ArgumentTypeError(f"case {part!r}: need >= 1 stream, pool >= 64")
        out.append(Case(n, pool))
    return out


def parse_engines(text: str) -> list[str]:
    names = list(ENGINES) if text == "all" else [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in names if e not in ENGINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"engines must be from {ENGINES} or 'all', got {text!r}")
    return names


async def _open(client: AsyncClient, text: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/streams`` with the first chunk; the whole ack (docs/api.md), which
    ``AsyncClient.open_stream`` reduces to the rid."""
    body = {"mode": "append", "final": False, "text": text, "sampling_params": sampling}
    r = await client.http.post("/v1/streams", json=body)
    if r.status_code >= 400:
        raise ServerError(r.status_code, r.text[:300])
    return dict(r.json())


async def _read_result(client: AsyncClient, rid: str, t0: float, rec: StreamRecord) -> None:
    """The stream's SSE result from open to end: stamps the first output token."""
    async with client.http.stream("GET", f"/v1/streams/{rid}/result",
                                  params={"stream": "true"}) as r:  # fmt: skip
        if r.status_code >= 400:
            await r.aread()
            raise RuntimeError(f"result stream: {r.status_code} {r.text[:200]}")
        async for line in r.aiter_lines():
            obj = parse_sse_line(line)
            if obj and obj.get("output_ids") and math.isnan(rec.first_token_s):
                rec.first_token_s = time.perf_counter() - t0


async def flush(client: AsyncClient, timeout_s: float = 60.0) -> None:
    """``POST /flush_cache`` until it is accepted (SGLang refuses while its last batch
    is still in flight; its reply is text, the reference server's JSON)."""
    deadline = time.monotonic() + timeout_s
    while (await client.http.post("/flush_cache")).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("/flush_cache was refused for a minute")
        await asyncio.sleep(0.2)


async def run_api_stream(client: AsyncClient, spec: StreamSpec, t0: float, gap_s: float,
                         sampling: dict[str, Any], engine: str) -> StreamRecord:  # fmt: skip
    """One stream over the stream REST API, chunk i at ``t0 + i * gap_s``; never
    raises: a failure is the record's ``error``."""
    rec = StreamRecord(spec.sid, engine)
    reader: asyncio.Task[None] | None = None
    try:
        await sleep_until(t0)
        rec.chunk_sent_s.append(time.perf_counter() - t0)
        ack = await _open(client, spec.chunks[0], sampling)
        rid = ack["rid"]
        rec.chunk_cached.append(int(ack["cached_tokens"]))
        reader = asyncio.create_task(_read_result(client, rid, t0, rec))
        for i, text in enumerate(spec.chunks[1:], start=1):
            final = i == len(spec.chunks) - 1
            await sleep_until(t0 + i * gap_s)
            sent = time.perf_counter() - t0
            rec.chunk_sent_s.append(sent)
            if final:
                rec.final_sent_s = sent
            a = await client.send_chunk(rid, text=text, final=final)
            rec.chunk_cached.append(a.cached_tokens)
            if final:
                rec.input_tokens, rec.cached_tokens = a.input_tokens, a.cached_tokens
        await reader
        res = await client.result(rid)
        meta = res.get("meta_info", {})
        rec.meta_cached_tokens = meta.get("cached_tokens")
        rec.ttft_server_s = meta.get("ttft_s")
        rec.output_ids = list(res.get("output_ids") or [])
        if math.isnan(rec.first_token_s):
            raise RuntimeError("no output token streamed")
    except Exception as exc:  # noqa: BLE001  (recorded per stream, the run goes on)
        rec.error = f"{type(exc).__name__}: {exc}"
        if reader is not None:
            reader.cancel()
    return rec


async def run_streams(engine: str, url: str, specs: list[StreamSpec], gap_s: float,
                      sampling: dict[str, Any], timeout_s: float = 600.0,
                      progress: Any = None) -> tuple[list[StreamRecord], dict[str, Any]]:  # fmt: skip
    """All streams of one case at once against ``url``: (records, server counters
    after the run where the engine has ``/v1/stats``). A warm-up ``/generate`` of a
    few hundred unrelated tokens first, then ``/flush_cache``, the same on every engine:
    first-forward initialization is not measured and nothing of it stays cached."""
    async with AsyncClient(url, timeout=timeout_s) as client:
        await client.generate(text=WARM_UP_TEXT, sampling_params={**sampling, "max_new_tokens": 2})
        await flush(client)
        t0 = time.perf_counter() + 0.2

        async def one(spec: StreamSpec) -> StreamRecord:
            if engine == "stock":
                coro = run_stock_stream(client.http, spec, t0, gap_s, sampling)
            else:
                coro = run_api_stream(client, spec, t0, gap_s, sampling, engine)
            try:
                return await asyncio.wait_for(coro, timeout_s)
            except TimeoutError:
                return StreamRecord(spec.sid, engine, error=f"timed out after {timeout_s:.0f} s")
            finally:
                if progress is not None:
                    progress.update(1)

        records = list(await asyncio.gather(*(one(s) for s in specs)))
        stats: dict[str, Any] = {}
        if engine != "stock":
            try:
                stats = await client.stats()
            except Exception as exc:  # noqa: BLE001  (counters are extra, not the result)
                stats = {"error": str(exc)}
    return records, stats


@dataclass
class CaseSummary:
    """One (engine, case) row: percentiles over the streams that finished."""

    engine: str
    case: str
    streams: int
    failed: int
    got_prefill: int  # streams with any KV computed before their final chunk
    input_tokens: dict[str, float]
    share: dict[str, float]  # prefilled share (final chunk's reply)
    meta_share: dict[str, float]  # the same from the result's meta_info.cached_tokens
    ttft_s: dict[str, float]  # client: final chunk sent -> first token over SSE
    server_ttft_s: dict[str, float]  # meta_info.ttft_s (stream API only)
    prefill_x: float | None  # stock: input tokens computed / final input (1.0 = no waste)
    wall_s: float
    notes: list[str] = field(default_factory=list)  # first errors, then oddities seen
    server_stats: dict[str, Any] = field(default_factory=dict)


def summarize(engine: str, case: Case, records: list[StreamRecord], wall_s: float,
              stats: dict[str, Any] | None = None) -> CaseSummary:  # fmt: skip
    ok = [r for r in records if r.ok]
    meta = [min(1.0, r.meta_cached_tokens / r.input_tokens) for r in ok
            if r.meta_cached_tokens is not None and r.meta_cached_tokens >= 0]  # fmt: skip
    negative = sum(1 for r in ok if (r.meta_cached_tokens or 0) < 0)
    notes = [f"meta_info.cached_tokens < 0 on {negative} stream(s) (left out of meta_share)"]
    computed = [(r.prefill_computed_tokens, r.input_tokens) for r in ok]
    waste = [c / n for c, n in computed if c is not None]
    keep = ("preemptions", "tokens_invalidated", "streams_parked", "steps",
            "preemptions_recompute", "preemptions_swap")  # fmt: skip
    return CaseSummary(
        engine=engine, case=case.name, streams=len(records), failed=len(records) - len(ok),
        got_prefill=sum(1 for r in ok if r.cached_tokens > 0),
        input_tokens=percentiles(r.input_tokens for r in ok),
        share=percentiles(r.prefilled_share for r in ok), meta_share=percentiles(meta),
        ttft_s=percentiles(r.ttft_client_s for r in ok),
        server_ttft_s=percentiles(r.ttft_server_s for r in ok if r.ttft_server_s is not None),
        prefill_x=sum(waste) / len(waste) if waste else None, wall_s=round(wall_s, 2),
        notes=sorted({r.error for r in records if r.error})[:5] + (notes if negative else []),
        server_stats={k: v for k, v in (stats or {}).items() if k in keep},
    )  # fmt: skip


def table_rows(summaries: list[CaseSummary]) -> list[dict[str, Any]]:
    return [{"engine": s.engine, "case": s.case, "got_prefill": f"{s.got_prefill}/{s.streams}",
             "share_p50": s.share["p50"], "share_mean": s.share["mean"],
             "meta_share_mean": s.meta_share["mean"], "ttft_p50_s": s.ttft_s["p50"],
             "ttft_p95_s": s.ttft_s["p95"], "ttft_mean_s": s.ttft_s["mean"],
             "srv_ttft_p50_s": s.server_ttft_s["p50"], "prefill_x": s.prefill_x,
             "input_tok_p50": s.input_tokens["p50"], "failed": s.failed}
            for s in summaries]  # fmt: skip


def comparisons(summaries: list[CaseSummary]) -> list[str]:
    """Per case: the issue's targets (sglang vs reference) and stream2llm vs stock."""
    lines = []
    for case in dict.fromkeys(s.case for s in summaries):
        by = {s.engine: s for s in summaries if s.case == case}
        ref, sgl, stock = by.get("reference"), by.get("sglang"), by.get("stock")
        if ref and sgl:
            x = sgl.ttft_s["p50"] / ref.ttft_s["p50"] if ref.ttft_s["p50"] > 0 else math.nan
            ok = sgl.share["mean"] >= TARGET_SHARE and x <= TARGET_TTFT_X
            lines.append(f"{case}: sglang share mean {sgl.share['mean']:.2f} (target >= "
                         f"{TARGET_SHARE}), TTFT P50 {x:.2f}x reference (target <= "
                         f"{TARGET_TTFT_X}x): {'MET' if ok else 'NOT MET'}")  # fmt: skip
        for ours in (o for o in (ref, sgl) if o and stock):
            assert stock is not None
            sp = stock.ttft_s["p50"] / ours.ttft_s["p50"] if ours.ttft_s["p50"] > 0 else math.nan
            waste = f", stock computed {stock.prefill_x:.2f}x its input" if stock.prefill_x else ""
            lines.append(f"{case}: {ours.engine} vs stock: TTFT P50 {sp:.2f}x faster "
                         f"({ours.ttft_s['p50']:.2f} s vs {stock.ttft_s['p50']:.2f} s), share "
                         f"{ours.share['mean']:.2f} vs {stock.share['mean']:.2f}{waste}")  # fmt: skip
    return lines


def timeline_events(records: list[StreamRecord]) -> list[dict[str, Any]]:
    """``eval.plots.plot_timeline`` events: chunk sends, the final chunk, the first
    token; the stock baseline's one-token requests as bars (sent -> answered)."""
    ev: list[dict[str, Any]] = []
    for r in records:
        rid = f"stream {r.sid}"
        ev += [{"t": t, "kind": "chunk", "rid": rid, "tokens": 0} for t in r.chunk_sent_s[:-1]]
        ev += [{"t": w.sent_s, "kind": "prefill", "rid": rid, "tokens": w.prompt_tokens,
                "dur": w.latency_s} for w in r.warm if math.isfinite(w.latency_s)]  # fmt: skip
        if math.isfinite(r.final_sent_s):
            ev.append({"t": r.final_sent_s, "kind": "final", "rid": rid, "tokens": 0})
        if math.isfinite(r.first_token_s):
            ev.append({"t": r.first_token_s, "kind": "first_token", "rid": rid, "tokens": 0})
    return ev


def plot_bars(summaries: list[CaseSummary], path: Path) -> Path:
    """Prefilled share (mean) and TTFT after final (P50) per case, a bar per engine."""
    cases = list(dict.fromkeys(s.case for s in summaries))
    engines = list(dict.fromkeys(s.engine for s in summaries))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    width = 0.8 / max(len(engines), 1)
    for j, engine in enumerate(engines):
        by = {s.case: s for s in summaries if s.engine == engine}
        xs = [i + j * width for i in range(len(cases))]
        axes[0].bar(xs, [by[c].share["mean"] if c in by else 0 for c in cases], width, label=engine)
        axes[1].bar(xs, [by[c].ttft_s["p50"] if c in by else 0 for c in cases], width, label=engine)
    for ax, title in zip(axes, ("prefilled before final (mean share)", "TTFT after final, P50 (s)"),
                         strict=True):  # fmt: skip
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases)
        ax.set_xlabel("streams x pool tokens")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench-streams", help="N concurrent streams per engine and pool "
                              "(reference, sglang, stock SGLang); --oneshot: plugin overhead")  # fmt: skip
    p.add_argument("--engine", type=parse_engines, default=list(ENGINES),
                   help="reference,sglang,stock (any of them) or all (default)")
    p.add_argument("--cases", type=parse_cases, default=parse_cases("6x16384,10x3072"),
                   help="STREAMSxPOOL,... (default 6x16384,10x3072)")
    p.add_argument("--chunks", type=int, default=3, help="context chunks before the question")
    p.add_argument("--words", default="70-100", help="words per chunk, MIN-MAX")
    p.add_argument("--gap-s", type=float, default=2.0, help="seconds between chunks")
    p.add_argument("--model-path", default=None,
                   help="smollm2-135m-instruct (default), tiny-random, or a checkpoint dir")
    p.add_argument("--seed", type=int, default=0, help="picks the passages and questions")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=0,
                   help="torch/OMP threads per server process (0: each engine's default, all cores)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="prefill tokens per step (reference --token-budget, SGLang "
                   "--chunked-prefill-size); default: each engine's own")  # fmt: skip
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per stream")
    p.add_argument("--log-dir", default=None, help="server logs (default: a temp dir)")
    p.add_argument("--json", dest="json_out", default=None, help="write results here")
    p.add_argument("--plot", default=None, help="directory for the bar chart and timelines")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_oneshot_args(p)
    p.set_defaults(func=run)
    return p


def _words(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def run(args: argparse.Namespace) -> int:
    if args.oneshot:
        return run_oneshot(args)
    if args.chunks < 1 or args.gap_s < 0 or args.max_new_tokens < 1:
        print("stream2llm bench-streams: need --chunks >= 1, --gap-s >= 0, --max-new-tokens >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    model = resolve_model(args.model_path)
    layout = layout_for(model)
    words = _words(args.words)
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "ignore_eos": True}
    summaries, raw = [], {}
    runs = [(e, c) for c in args.cases for e in args.engine]
    bar = tqdm(runs, desc="bench-streams", unit="run", disable=args.quiet)
    for engine, case in bar:
        bar.set_postfix_str(f"{engine} {case.name}: starting server")
        specs = build_specs(case.streams, layout, args.chunks, words, args.seed)
        spec = ServerSpec(engine, args.model_path, case.pool, args.threads, args.token_budget,
                          startup_timeout=900.0)  # fmt: skip
        with running(spec, args.log_dir, progress=not args.quiet) as url:
            bar.set_postfix_str(f"{engine} {case.name}: streams")
            inner = tqdm(total=len(specs), desc=f"{engine} {case.name}", unit="stream",
                         leave=False, disable=args.quiet)  # fmt: skip
            t = time.perf_counter()
            records, stats = asyncio.run(run_streams(engine, url, specs, args.gap_s, sampling,
                                                     args.request_timeout, inner))  # fmt: skip
            inner.close()
        summaries.append(summarize(engine, case, records, time.perf_counter() - t, stats))
        raw[f"{engine}/{case.name}"] = records
    bar.close()
    rows = table_rows(summaries)
    print(format_table(rows, list(rows[0])))
    for line in comparisons(summaries):
        print(line)
    config = {"engines": args.engine, "cases": [c.name for c in args.cases],
              "chunks": args.chunks, "words": list(words), "gap_s": args.gap_s,
              "model": str(model), "seed": args.seed, "sampling": sampling,
              "threads": args.threads, "token_budget": args.token_budget}  # fmt: skip
    if args.json_out:
        out = {"config": config, "results": [asdict(s) for s in summaries],
               "streams": {k: [asdict(r) for r in v] for k, v in raw.items()}}  # fmt: skip
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        d = Path(args.plot)
        print(f"plots: {plot_bars(summaries, d / 'bench-streams.png')}")
        for key, records in raw.items():
            name = key.replace("/", "-")
            plot_timeline(timeline_events(records), d / f"bench-streams-timeline-{name}.png",
                          title=f"{key}: chunks, final chunk, first token")  # fmt: skip
    return 0 if all(s.failed == 0 for s in summaries) else 1
