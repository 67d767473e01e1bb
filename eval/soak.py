"""Soak test of a stream2llm server: many streams with random chunk timings,
modes, aborts, walk-aways and reader disconnects against a small KV pool, then
check that nothing leaked, nothing was lost and every output is exact.

Why: the unit tests prove each fault path once; leaks and lost requests show up
only when the paths interleave under memory pressure (preemption, reaping and
aborts racing with steps). Loopback only, bounded in count and time.

    python -m eval.soak --streams 1000 --concurrency 32 --max-total-tokens 1024

Per stream (seeded): append or update mode (or a one-shot ``/generate``);
chunks as token ids with random sizes and random pauses; then one of: final +
read the result; final + an SSE reader that disconnects after its first frame,
then read the result; abort (DELETE) at a random point; walk away without
``final`` (the server must reap it: its result is then a 410). Checks:

- lost: every rid ends in a result, an abort, a 410 reap, or a counted error;
- leaks: ``/v1/stats`` back at the idle baseline (nothing pinned, nothing on the
  host, ``kv_used == kv_evictable``, no stream open);
- exact: every completed stream's output equals a one-shot greedy ``/generate``
  of its final input ids.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from srt_ext.client.rest import AsyncClient, ServerError


@dataclass
class SoakConfig:
    streams: int = 1000
    concurrency: int = 32
    seed: int = 0
    prompt_tokens: tuple[int, int] = (8, 160)
    new_tokens: tuple[int, int] = (1, 8)
    max_delay_s: float = 0.05  # random pause before each chunk
    p_oneshot: float = 0.1
    p_update: float = 0.3
    p_abort: float = 0.1
    p_walkaway: float = 0.05
    p_disconnect: float = 0.1
    idle_timeout_s: float = 2.0  # the server's --stream-idle-timeout


@dataclass
class Outcome:
    rid: str
    kind: str  # done | aborted | walkaway -> reaped | error:<status>
    final_ids: list[int] = field(default_factory=list)
    max_new: int = 0
    output_ids: list[int] = field(default_factory=list)


def _chunks(rng: random.Random, ids: list[int], mode: str) -> list[list[int]]:
    if mode == "update":  # versions sharing a random prefix with the one before, ending at ids
        out, prev = [], ids
        for _ in range(rng.randint(0, 3)):
            noise = [rng.randrange(1000, 30000) for _ in range(rng.randint(1, 12))]
            out.append(prev[: rng.randint(0, len(prev))] + noise)
            prev = out[-1]
        return [*out, ids]
    k = rng.randint(0, min(5, len(ids) - 1))
    cuts = sorted(rng.sample(range(1, len(ids)), k))
    bounds = [0, *cuts, len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


async def one_stream(ac: AsyncClient, i: int, cfg: SoakConfig, lat: list[float]) -> Outcome:
    rng = random.Random(cfg.seed * 1_000_003 + i)
    ids = [rng.randrange(1000, 30000) for _ in range(rng.randint(*cfg.prompt_tokens))]
    new = rng.randint(*cfg.new_tokens)
    sp = {"max_new_tokens": new}
    if rng.random() < cfg.p_oneshot:
        out = await ac.generate(input_ids=ids, sampling_params=sp)
        return Outcome(out["meta_info"]["id"], "oneshot", ids, new, out["output_ids"])
    mode = "update" if rng.random() < cfg.p_update else "append"
    fate = rng.random()
    rid = await ac.open_stream(mode=mode, sampling_params=sp)
    pieces = _chunks(rng, ids, mode)
    stop_at = rng.randrange(len(pieces)) if fate < cfg.p_abort + cfg.p_walkaway else len(pieces)
    for j, p in enumerate(pieces[:stop_at]):
        await asyncio.sleep(rng.random() * cfg.max_delay_s)
        t0 = time.perf_counter()
        await ac.send_chunk(rid, input_ids=p, final=j == len(pieces) - 1)
        lat.append(time.perf_counter() - t0)
    if fate < cfg.p_abort:
        await ac.abort(rid)
        return Outcome(rid, "aborted")
    if fate < cfg.p_abort + cfg.p_walkaway:
        return Outcome(rid, "walkaway")
    if fate < cfg.p_abort + cfg.p_walkaway + cfg.p_disconnect:
        agen = ac.stream_result(rid)
        await agen.__anext__()  # first frame, then the reader goes away
        await agen.aclose()
    out = await ac.result(rid)
    return Outcome(rid, "done", ids, new, out["output_ids"])


async def _guarded(ac: AsyncClient, i: int, cfg: SoakConfig, lat: list[float],
                   sem: asyncio.Semaphore) -> Outcome:  # fmt: skip
    async with sem:
        try:
            return await one_stream(ac, i, cfg, lat)
        except ServerError as exc:
            return Outcome(f"#{i}", f"error:{exc.status}")


async def wait_idle(ac: AsyncClient, timeout: float) -> dict[str, Any]:
    """Stats once no stream is open (or the last stats at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        st = await ac.stats()
        if st["streams_open"] == 0 or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.1)


def leaks(st: dict[str, Any]) -> dict[str, Any]:
    """What is not at the idle baseline (empty dict: nothing leaked)."""
    bad = {k: st[k] for k in ("kv_pinned_tokens", "kv_host_tokens", "streams_open",
                              "requests_running") if st[k]}  # fmt: skip
    if st["kv_used_tokens"] != st["kv_evictable_tokens"]:
        bad["kv_used_minus_evictable"] = st["kv_used_tokens"] - st["kv_evictable_tokens"]
    return bad


async def run_soak(url: str, cfg: SoakConfig, api_key: str | None = None) -> dict[str, Any]:
    """Run the soak against ``url`` (loopback) and return the report."""
    lat: list[float] = []
    sem = asyncio.Semaphore(cfg.concurrency)
    t0 = time.perf_counter()
    async with AsyncClient(url, api_key=api_key, timeout=120.0) as ac:
        outs = await asyncio.gather(*(_guarded(ac, i, cfg, lat, sem) for i in range(cfg.streams)))
        served_s = time.perf_counter() - t0
        st = await wait_idle(ac, 3 * cfg.idle_timeout_s + 30)
        for o in outs:  # walk-aways must have been reaped: their result says so (410)
            if o.kind == "walkaway":
                try:
                    await ac.result(o.rid)
                    o.kind = "walkaway-not-reaped"
                except ServerError as exc:
                    o.kind = "reaped" if exc.status == 410 else f"walkaway-{exc.status}"
        done = [o for o in outs if o.kind == "done"]

        async def ref(o: Outcome) -> bool:
            async with sem:
                r = await ac.generate(input_ids=o.final_ids, sampling_params={"max_new_tokens": o.max_new})
            return r["output_ids"] == o.output_ids

        exact = await asyncio.gather(*(ref(o) for o in done))
        metrics = (await ac.http.get("/metrics")).text
    kinds = Counter(o.kind for o in outs)
    expected = {"done", "oneshot", "aborted", "reaped"}
    lat.sort()
    return {
        "streams": cfg.streams,
        "outcomes": dict(sorted(kinds.items())),
        "errors": {k: n for k, n in kinds.items() if k not in expected},
        "lost": sum(n for k, n in kinds.items() if k not in expected and not k.startswith("error:")),
        "mismatches": exact.count(False),
        "checked_exact": len(exact),
        "leaks": leaks(st),
        "final_stats": st,
        "chunk_posts": len(lat),
        "chunk_p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "chunk_p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
        "served_s": round(served_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "reaped_metrics": [ln for ln in metrics.splitlines() if ln.startswith("stream2llm_reaped_total")],
        "config": asdict(cfg),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.soak", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-total-tokens", type=int, default=1024, help="KV pool of the server")
    p.add_argument("--idle-timeout", type=float, default=2.0, help="server --stream-idle-timeout")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    p.add_argument("--out", default=None, help="write the JSON report here too")
    a = p.parse_args(argv)
    from srt_ext.launch import launch_server

    cfg = SoakConfig(streams=a.streams, concurrency=a.concurrency, seed=a.seed,
                     idle_timeout_s=a.idle_timeout)  # fmt: skip
    with launch_server(max_total_tokens=a.max_total_tokens, stream_idle_timeout=a.idle_timeout,
                       threads=a.threads, token_budget=128) as h:  # fmt: skip
        report = asyncio.run(run_soak(h.url, cfg))
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    ok = not report["lost"] and not report["mismatches"] and not report["leaks"] and not report["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
