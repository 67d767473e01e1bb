"""``python -m srt_ext.cluster.bench``: the same load on clusters of 1, 2, ... replicas.

Per replica count: a fresh cluster (SGLang servers with our plugin, the router,
the gateway), then S concurrent append streams (C chunks of T token ids each,
G s apart, as a retriever would send them; the final chunk asks for N new
tokens), then the same S final inputs as concurrent one-shot ``/generate``
requests through the router (after a cache flush). Printed: the streams' TTFT
after the final chunk (server-side ``meta_info.ttft_s``, P50/max), their wall
time and output tokens/s, and the one-shots' wall time and requests/s.
Numbers for docs/scale-out.md; the command is in its "Measured" section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

import httpx

from srt_ext.cluster.launch import Cluster, ClusterSpec
from srt_ext.engines.sglang.launch import SGLangServerConfig


async def _stream(h: httpx.AsyncClient, chunks: list[list[int]], gap: float, sp: dict[str, Any]) -> dict:
    r = await h.post("/v1/streams", json={"input_ids": chunks[0], "sampling_params": sp})
    r.raise_for_status()
    rid, replica = r.json()["rid"], r.json()["replica"]
    for j, c in enumerate(chunks[1:]):
        await asyncio.sleep(gap)
        r = await h.post(f"/v1/streams/{rid}/chunks", json={"input_ids": c, "final": j == len(chunks) - 2})
        r.raise_for_status()
    res = (await h.get(f"/v1/streams/{rid}/result")).json()
    return {"ttft_s": res["meta_info"]["ttft_s"], "tokens": len(res["output_ids"]), "replica": replica}


async def _load(url: str, streams: int, chunks: int, tokens: int, gap: float, new: int, seed: int) -> dict:
    rng = random.Random(seed)
    inputs = [[[rng.randrange(5, 30000) for _ in range(tokens)] for _ in range(chunks)] for _ in range(streams)]
    sp = {"max_new_tokens": new, "ignore_eos": True, "temperature": 0.0}
    async with httpx.AsyncClient(base_url=url, timeout=1800) as h:
        t0 = time.monotonic()
        got = await asyncio.gather(*(_stream(h, cs, gap, sp) for cs in inputs))
        stream_wall = time.monotonic() - t0
        (await h.post("/flush_cache")).raise_for_status()
        t0 = time.monotonic()
        outs = await asyncio.gather(*(h.post("/generate", json={"input_ids": sum(cs, []), "sampling_params": sp})
                                      for cs in inputs))  # fmt: skip
        one_wall = time.monotonic() - t0
        assert all(o.status_code == 200 for o in outs), [o.text for o in outs if o.status_code != 200]
    ttft = sorted(g["ttft_s"] for g in got)
    per: dict[str, int] = {}
    for g in got:
        per[g["replica"]] = per.get(g["replica"], 0) + 1
    return {"streams": streams, "ttft_p50_s": round(statistics.median(ttft), 3), "ttft_max_s": round(ttft[-1], 3),
            "stream_wall_s": round(stream_wall, 2),
            "stream_out_tok_per_s": round(sum(g["tokens"] for g in got) / stream_wall, 1),
            "oneshot_wall_s": round(one_wall, 2), "oneshot_req_per_s": round(streams / one_wall, 3),
            "streams_per_replica": per}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--model-path", default="tiny-random")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between a stream's chunks")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-total-tokens", type=int, default=16384)
    p.add_argument("--log-dir", default=None)
    a = p.parse_args(argv)
    for n in [int(x) for x in a.replicas.split(",")]:
        cfg = SGLangServerConfig(model_path=a.model_path, max_total_tokens=a.max_total_tokens,
                                 threads=a.threads, log_level="warning")  # fmt: skip
        t0 = time.monotonic()
        with Cluster(ClusterSpec(replicas=n, server=cfg, shutdown_grace=5, log_dir=a.log_dir)) as c:
            start = time.monotonic() - t0
            row = asyncio.run(_load(c.url, a.streams, a.chunks, a.chunk_tokens, a.gap, a.new_tokens, 0))
        print(json.dumps({"replicas": n, "startup_s": round(start, 1), **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
