"""`stream2llm profile` on SGLang's engine (the default): the cost model's curves
measured on what serves.

* **prefill**: SGLang's own server with our plugin (``SGLangServer``, started with
  SGLang's ``--enable-metrics`` so that ``meta_info`` carries its scheduler's time
  stamps) answers ``/generate`` of N fresh token ids with ``max_new_tokens`` 1 on a
  cache flushed just before; the time is SGLang's own step, from the request's
  ``forward_entry_time`` to its ``prefill_finished_time`` (forward and sampling of
  the one token; queueing, tokenizing and HTTP are not in it). SGLang's whole
  ``e2e_latency`` is recorded beside it, and each request's ``cached_tokens`` (0:
  nothing was reused).
* **decode**: B concurrent requests of C-token prompts with K new tokens (cache
  flushed before): one decode step of the batch is the mean over the requests of
  (finished - prefill finished) / (K - 1).
* **swap**: out + in through SGLang's KV pool (``MHATokenToKVPool.get_cpu_copy`` /
  ``load_cpu_copy``, what ``srt_ext/engines/sglang/kv.py`` runs on a swap), on a pool
  of the served model's layout, dtype and device built in this process (the copy is
  the same tensor indexing whichever process owns the pool); each round trip is
  checked to bring back the same KV.
* **fixed**: the forward's fixed costs are inside the prefill curve (``step_s`` and
  ``sampled_token_s`` 0); the HTTP legs are the client's round trips less SGLang's
  own latency (``request_s``, ``result_s``) and a non-final chunk's round trip
  (``ack_s``); ``tokenize_s_per_1k`` is the checkpoint's tokenizer, timed here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import radix_stream  # noqa: F401  (sglang importable on the CPU stack, before any sglang import)

DECODE_NEW_TOKENS = 9  # K: a decode point is (latency(K) - latency(1)) / (K - 1)


def arch(model_dir: Path) -> dict[str, int]:
    """Layers, KV heads and head dim from the checkpoint's config.json."""
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = int(cfg["num_attention_heads"])
    return {"layers": int(cfg["num_hidden_layers"]),
            "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            "vocab": int(cfg["vocab_size"]), "torch_dtype": str(cfg.get("torch_dtype") or "")}  # fmt: skip


def served_dtype(args: argparse.Namespace, a: dict[str, Any]) -> str:
    """The dtype SGLang's launcher serves (and its KV pool holds): float32 on CPU
    unless asked, else the checkpoint's (SGLang's auto)."""
    if args.dtype != "auto":
        return str(args.dtype)
    if args.device == "cpu":
        return "float32"
    return a["torch_dtype"] if a["torch_dtype"] in ("float16", "bfloat16", "float32") else "bfloat16"


class Ids:
    """Fresh token ids for every request: no two timed prompts share a prefix."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.k = vocab, 0

    def __call__(self, n: int) -> list[int]:
        self.k += 1
        return [10 + (self.k * 7919 + i * 104729 + (i * i) % 97) % (self.vocab - 20)
                for i in range(n)]  # fmt: skip


def _stamp(meta: dict[str, Any], key: str) -> float:
    v = meta.get(key)
    if not isinstance(v, (int, float)) or v <= 0:
        raise RuntimeError(f"SGLang's meta_info has no {key} (is --enable-metrics on?)")
    return float(v)


def prefill_point(client: Any, ids: Ids, n: int) -> tuple[float, float, int]:
    """A one-token /generate of n fresh ids on a flushed cache: (SGLang's prefill step,
    its e2e latency, its cached tokens)."""
    client.flush_cache()
    sp = {"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True}
    meta = client.generate(input_ids=ids(n), sampling_params=sp)["meta_info"]
    step = _stamp(meta, "prefill_finished_time") - _stamp(meta, "forward_entry_time")
    return step, float(meta["e2e_latency"]), int(meta.get("cached_tokens") or 0)


async def _batch(url: str, prompts: list[list[int]], new: int) -> list[dict[str, Any]]:
    from srt_ext.client.rest import AsyncClient

    sp = {"max_new_tokens": new, "temperature": 0.0, "ignore_eos": True}
    async with AsyncClient(url) as c:
        await c.flush_cache()
        outs = await asyncio.gather(*(c.generate(input_ids=p, sampling_params=sp) for p in prompts))
    return [o["meta_info"] for o in outs]


def decode_point(url: str, ids: Ids, batch: int, context: int) -> float:
    """One decode step of ``batch`` requests at ``context`` tokens (see the module doc)."""
    k = DECODE_NEW_TOKENS
    metas = asyncio.run(_batch(url, [ids(context) for _ in range(batch)], k))
    per = [(_stamp(m, "request_finished_ts") - _stamp(m, "prefill_finished_time")) / (k - 1)
           for m in metas]  # fmt: skip
    return max(1e-7, statistics.fmean(per))


class SwapTimer:
    """Swap out + in of n tokens through SGLang's MHATokenToKVPool."""

    def __init__(self, a: dict[str, int], dtype: str, device: str, size: int) -> None:
        import torch
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

        self.torch, self.device = torch, device
        self.pool = MHATokenToKVPool(size + 1, 1, getattr(torch, dtype), a["kv_heads"],
                                     a["head_dim"], a["layers"], device, False)  # fmt: skip
        for buf in (*self.pool.k_buffer, *self.pool.v_buffer):  # KV to compare after a trip
            buf.copy_(torch.randn(buf.shape, dtype=torch.float32).to(buf.dtype))
        self.size = size
        self.verified = 0

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def __call__(self, n: int) -> float:
        torch = self.torch
        idx = torch.arange(1, n + 1, dtype=torch.int64, device=self.device)
        before = self.pool.k_buffer[-1][idx].clone()
        self._sync()
        t0 = time.perf_counter()
        host = self.pool.get_cpu_copy(idx)
        self._sync()
        t1 = time.perf_counter()
        self.pool.k_buffer[-1][idx] = 0  # the slots are reused meanwhile
        self._sync()
        t2 = time.perf_counter()
        self.pool.load_cpu_copy(host, idx)
        self._sync()
        t3 = time.perf_counter()
        if not torch.equal(self.pool.k_buffer[-1][idx], before):
            raise RuntimeError(f"SGLang's KV pool did not bring back {n} tokens' KV")
        self.verified += 1
        return (t1 - t0) + (t3 - t2)


def http_fixed(url: str, ids: Ids, repeats: int) -> dict[str, float]:
    """The HTTP legs on SGLang's server (client round trips less SGLang's own time)."""
    from srt_ext.client.rest import Client

    sp = {"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True}
    outs, results, acks = [], [], []
    with Client(url) as c:
        for r in range(max(3, repeats) + 1):
            c.flush_cache()
            t0 = time.perf_counter()
            meta = c.generate(input_ids=ids(16), sampling_params=sp)["meta_info"]
            rtt = time.perf_counter() - t0
            rid = c.open_stream("append", sp, input_ids=ids(8))
            time.sleep(0.02)
            a0 = time.perf_counter()
            c.send_chunk(rid, input_ids=ids(4))
            ack = time.perf_counter() - a0
            time.sleep(0.02)
            f0 = time.perf_counter()
            c.send_chunk(rid, input_ids=ids(4), final=True)
            res = c.result(rid)
            fin = time.perf_counter() - f0
            if r == 0:
                continue  # warm-up
            outs.append(rtt - float(meta["e2e_latency"]))
            acks.append(ack)
            server = (res.get("meta_info") or {}).get("ttft_s")
            if isinstance(server, (int, float)):
                results.append(fin - float(server))
    med = statistics.median
    return {"request_s": max(0.0, med(outs)), "ack_s": max(0.0, med(acks)),
            "result_s": max(0.0, med(results)) if results else max(0.0, med(outs))}  # fmt: skip


def tokenize_per_1k(model_dir: Path, repeats: int) -> float:
    """Seconds per 1K tokens of the checkpoint's tokenizer (slope, 250 vs 4,000 words)."""
    from transformers import AutoTokenizer

    from srt_ext.cli.profile_fixed import _median, _text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.model_max_length = 1 << 30
    small, big = _text(250, 1), _text(4000, 2)
    n_small, n_big = len(tok(small)["input_ids"]), len(tok(big)["input_ids"])

    def t(text: str) -> Any:
        def once() -> float:
            t0 = time.perf_counter()
            tok(text)
            return time.perf_counter() - t0

        return once

    ts, tb = _median(t(small), repeats, 1), _median(t(big), repeats, 1)
    return max(0.0, (tb - ts) / (n_big - n_small) * 1000.0)


def measure_sglang(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement on SGLang's engine; the profile dict in cost_model.py's format."""
    import sglang
    import torch

    from srt_ext.cli.profile import sizes, timed
    from srt_ext.client.rest import Client
    from srt_ext.engines.reference.model_store import resolve_model
    from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

    if args.dtype == "float64":
        raise SystemExit("stream2llm profile: SGLang's engine does not serve --dtype float64 "
                         "(use --engine reference)")  # fmt: skip
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    model = resolve_model(args.model_path)
    a = arch(model)
    dtype = served_dtype(args, a)
    ns = sizes(args.max_tokens)
    batches = [int(b) for b in args.decode_batches.split(",") if b.strip()]
    contexts = sorted({min(ns[-1], 256), ns[-1] // 4 or 16, ns[-1]})
    cap = max(5 * ns[-1], max(b * (c + DECODE_NEW_TOKENS + 1) for b in batches for c in contexts))
    cfg = SGLangServerConfig(model_path=str(model), device=args.device, max_total_tokens=cap,
                             threads=args.threads, chunked_prefill_size=max(64, ns[-1]),
                             dtype=None if args.dtype == "auto" else args.dtype,
                             extra_args=["--enable-metrics"])  # fmt: skip
    ids = Ids(a["vocab"])
    rep, warm = args.repeats, args.warmup
    prefill, e2e, cached = [], [], []
    swap_timer = SwapTimer(a, dtype, args.device, ns[-1])
    swap = [timed(lambda n=n: swap_timer(n), rep, warm) for n in ns]
    print("  starting SGLang's server with the stream2llm plugin", file=sys.stderr)
    with SGLangServer(cfg).start(progress=not getattr(args, "quiet", False)) as srv, \
            Client(srv.url) as client:
        if srv.cfg.device == "cpu" and not srv.uses_streaming_tree():
            raise RuntimeError("SGLang's server did not load the stream2llm tree")
        for n in ns:
            seen: list[tuple[float, int]] = []

            def one(n: int = n, seen: list[tuple[float, int]] = seen) -> float:
                s, total, c = prefill_point(client, ids, n)
                seen.append((total, c))
                return s

            prefill.append(timed(one, rep, warm))
            e2e.append(round(statistics.median(t for t, _ in seen[warm:] or seen), 7))
            cached.append(max(c for _, c in seen))
            print(f"  N={n:6d}  prefill {prefill[-1] * 1e3:9.3f} ms  swap out+in "
                  f"{swap[ns.index(n)] * 1e3:8.3f} ms", file=sys.stderr)  # fmt: skip
        dec: dict[str, list] = {"batch": [], "context": [], "seconds": []}
        for b in batches:
            for c in contexts:
                dec["batch"].append(b)
                dec["context"].append(c)
                dec["seconds"].append(round(timed(lambda b=b, c=c: decode_point(srv.url, ids, b, c),
                                                  rep, warm), 7))  # fmt: skip
        http = {} if args.skip_http else http_fixed(srv.url, ids, max(3, rep))
        startup_s = srv.startup_s
    where = f"measured by `stream2llm profile` on SGLang's engine ({args.device})"
    fixed: dict[str, Any] = {
        "step_s": 0.0, "sampled_token_s": 0.0, "sample_tile": 1,
        "tokenize_s_per_1k": round(tokenize_per_1k(model, max(3, rep)), 7),
        **{k: round(v, 7) for k, v in http.items()},
    }
    fixed["source"] = {
        "step_s": f"{where}: inside the prefill and decode points (SGLang's own steps)",
        "sampled_token_s": f"{where}: inside the prefill curve (one sampled token)",
        "tokenize_s_per_1k": f"{where}: the checkpoint's tokenizer, 250 vs 4,000 words",
        "chunk_s": "not measured on SGLang's engine (0): its chunk way in is in ack_s",
        "ack_s": f"{where}: a non-final chunk's round trip" if http else "not measured (0)",
        "request_s": f"{where}: /generate round trip minus SGLang's e2e_latency" if http
        else "not measured (0)",
        "result_s": f"{where}: final chunk sent -> result received, minus the frontend's "
        "ttft_s" if http else "not measured (request_s)",
    }
    el = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    return {
        "name": args.name or Path(args.out).stem,
        "derived": False,
        "description": f"measured by `stream2llm profile` on SGLang's engine ({args.device}, "
        f"{a['layers']}-layer model, {dtype}); median of {rep} after {warm} warm-up",
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "sglang": sglang.__version__,
            "engine": "sglang", "python": platform.python_version(), "device": args.device,
            "dtype": dtype, "model": str(model), "layers": a["layers"], "kv_heads": a["kv_heads"],
            "head_dim": a["head_dim"], "server_startup_s": round(startup_s, 1),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "method": {"repeats": rep, "warmup": warm, "statistic": "median", "engine": "sglang",
                   "prefill": "SGLang /generate, max_new_tokens 1, fresh ids, cache flushed "
                   "before each; seconds = meta_info prefill_finished_time - "
                   "forward_entry_time (--enable-metrics); e2e_seconds = its e2e_latency",
                   "decode": f"B concurrent requests x {DECODE_NEW_TOKENS} new tokens: mean of "
                   f"(request_finished_ts - prefill_finished_time) / {DECODE_NEW_TOKENS - 1}",
                   "swap": "out + in through SGLang's MHATokenToKVPool get_cpu_copy / "
                   "load_cpu_copy (the plugin's swap), round trips checked",
                   "swap_checked": swap_timer.verified},
        "kv_bytes_per_token": int(2 * a["layers"] * a["kv_heads"] * a["head_dim"] * el),
        "kv_capacity_tokens": int(args.kv_capacity_tokens),
        "prefill": {"tokens": ns, "seconds": [round(s, 7) for s in prefill],
                    "e2e_seconds": e2e, "cached_tokens": cached},
        "swap": {"tokens": ns, "seconds": [round(s, 7) for s in swap]},
        "decode": dec,
        "fixed": fixed,
    }  # fmt: skip
