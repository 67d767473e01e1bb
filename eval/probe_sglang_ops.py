"""Which ``sgl_kernel`` ops SGLang's own server calls on this CPU, by running it.

    PYTHONPATH=. .venv/bin/python eval/probe_sglang_ops.py [--model-path DIR]

Starts SGLang's server (``--engine sglang`` launcher, our tree) with the
stand-in's call trace on (``STREAM2LLM_SGL_KERNEL_TRACE``), a small KV pool and
small prefill chunks, then runs: a one-shot request; a long prompt (chunked
prefill); concurrent long decodes that overflow the pool (SGLang retracts
requests: recompute). Prints the ops called and whether each path ran, and
checks that the retracted batch still produced the unpressured greedy tokens.

SGLang's swap path (its hierarchical cache: KV copied to host memory and back)
cannot be probed with our tree: the ``stream2llm`` radix-cache backend refuses
``--enable-hierarchical-cache`` at start (radix_stream/sglang_plugin.py).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx

from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig


def _gen(url: str, ids: list[int], new: int, ignore_eos: bool = True) -> dict[str, Any]:
    r = httpx.post(url + "/generate", timeout=900, json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": new, "temperature": 0, "ignore_eos": ignore_eos}})  # fmt: skip
    r.raise_for_status()
    return dict(r.json())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--pool", type=int, default=1024, help="KV pool tokens (small: retraction)")
    ap.add_argument("--chunk", type=int, default=128, help="--chunked-prefill-size")
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--decode", type=int, default=400, help="new tokens per concurrent request")
    args = ap.parse_args(argv)
    trace = Path(tempfile.mkstemp(prefix="sgl-kernel-trace-")[1])
    cfg = SGLangServerConfig(model_path=args.model_path, max_total_tokens=args.pool,
                             chunked_prefill_size=args.chunk, threads=1,
                             # admit decodes optimistically so the pool overflows mid-decode
                             extra_args=["--schedule-conservativeness", "0.01"],
                             env={"STREAM2LLM_SGL_KERNEL_TRACE": str(trace)})  # fmt: skip
    rng = random.Random(0)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(1000, 20000) for _ in range(n)]

    ran: dict[str, Any] = {}
    with SGLangServer(cfg) as s:
        print(f"started in {s.startup_s:.0f} s; log {s.log_path}")
        _gen(s.url, prompt(16), 4)
        ran["one-shot"] = True
        _gen(s.url, prompt(5 * args.chunk + 7), 2)
        ran["chunked prefill"] = "Prefill batch" in s.log_text()
        prompts = [prompt(64) for _ in range(args.concurrent)]
        # without ignore_eos: SGLang reserves a request's whole max_new_tokens when it
        # ignores EOS (PrefillAdder ratio 1.0), and the pool never overflows
        alone = [_gen(s.url, p, args.decode, False)["output_ids"] for p in prompts[:2]]
        with cf.ThreadPoolExecutor(args.concurrent) as ex:
            outs = list(ex.map(lambda p: _gen(s.url, p, args.decode, False), prompts))
        retracted = sum(int(o["meta_info"].get("num_retractions") or 0) for o in outs)
        ran["retraction (recompute)"] = retracted
        ran["retracted outputs exact"] = all(o["output_ids"] == a for o, a in zip(outs[:2], alone, strict=True))
        ran["log: pool full, retract"] = "Retract requests" in s.log_text()
    calls = collections.Counter(line.split()[1] for line in trace.read_text().splitlines())
    for k, v in ran.items():
        print(f"{k}: {v}")
    print("sgl_kernel ops called:", dict(calls) or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
