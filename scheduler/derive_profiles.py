"""Derive latency profiles from first principles (until a GPU measures them).

``python -m scheduler.derive_profiles`` rewrites the ``"derived": true`` JSON
files in ``scheduler/profiles/``. A measured profile (``stream2llm profile``)
has the same format with ``"derived": false`` and is never overwritten here.

Model of one engine step (tensor parallel over ``tp`` GPUs):
    compute = (2*params*T + 4*layers*d_model*P) / (tp * peak * efficiency)
            + TP all-reduce bytes / link bandwidth
    memory  = (weights/tp + KV bytes read by attention/tp) / HBM bandwidth
    step    = overhead + max(compute, memory)
with T new tokens and P query-key pairs. Swap moves 128 KiB/token over each
GPU's own host link (its half of the KV), out and back, plus a fixed latency
per direction.

The per-step overhead is *not* in the curves: it is the profile's
``fixed.step_s``, next to the other fixed costs of real serving (per request,
per chunk, per sampled token, tokenization; scheduler.cost_model.FixedCosts),
each with its source in ``fixed.source`` (GPU_FIXED below). None of them has
been measured on a GPU yet; they are estimates from published figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from scheduler.cost_model import PROFILE_DIR
from scheduler.step_model import attention_pairs


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    tp: int
    peak_flops: float  # per GPU, dense bf16
    efficiency: float  # achieved fraction in prefill
    hbm_bytes_s: float  # per GPU
    hbm_bytes: float  # per GPU
    mem_util: float  # fraction of HBM the engine may use
    activation_reserve_bytes: float  # per GPU, left out of the KV pool
    host_link_bytes_s: float  # per GPU per direction, effective
    host_latency_s: float  # per swap direction
    tp_link_bytes_s: float  # all-reduce effective bandwidth
    step_overhead_s: float  # CPU-side scheduling, launches (per step)
    params: float
    layers: int
    d_model: int
    kv_bytes_per_token: int  # whole model (all layers, K and V)
    weight_bytes: float


class ModelShape(TypedDict):
    """The model fields of :class:`Hardware`, typed as there (splatted into it)."""

    params: float
    layers: int
    d_model: int
    kv_bytes_per_token: int
    weight_bytes: float


LLAMA3_8B = ModelShape(
    params=8.03e9, layers=32, d_model=4096, kv_bytes_per_token=131072, weight_bytes=16.06e9
)

HARDWARE = [
    Hardware(
        name="h200-tp2-llama3-8b",
        description="2x H200 (141 GB HBM3e), tensor parallel 2, Llama-3.1-8B bf16",
        tp=2, peak_flops=790e12, efficiency=0.5, hbm_bytes_s=4.3e12, hbm_bytes=141e9,
        mem_util=0.8, activation_reserve_bytes=4e9, host_link_bytes_s=25e9,
        host_latency_s=0.5e-3, tp_link_bytes_s=300e9, step_overhead_s=1.5e-3, **LLAMA3_8B,
    ),
    Hardware(
        name="h100-tp2-llama3-8b",
        description="2x H100 SXM (80 GB HBM3), tensor parallel 2, Llama-3.1-8B bf16",
        tp=2, peak_flops=790e12, efficiency=0.5, hbm_bytes_s=3.0e12, hbm_bytes=80e9,
        mem_util=0.8, activation_reserve_bytes=4e9, host_link_bytes_s=25e9,
        host_latency_s=0.5e-3, tp_link_bytes_s=300e9, step_overhead_s=1.5e-3, **LLAMA3_8B,
    ),
    Hardware(
        name="h200-tp2-llama3-8b-mfu75",
        description="SENSITIVITY VARIANT of h200-tp2-llama3-8b: prefill at 75% of the measured "
        "790 TFLOP/s (about 60% of the 989 TFLOP/s datasheet peak) instead of 50%",
        tp=2, peak_flops=790e12, efficiency=0.75, hbm_bytes_s=4.3e12, hbm_bytes=141e9,
        mem_util=0.8, activation_reserve_bytes=4e9, host_link_bytes_s=25e9,
        host_latency_s=0.5e-3, tp_link_bytes_s=300e9, step_overhead_s=1.5e-3, **LLAMA3_8B,
    ),
    Hardware(
        name="cpu-reference",
        description="PLACEHOLDER: 2-core CPU, sub-1B model (Qwen2.5-0.5B-like); replace with "
        "`stream2llm profile` measurements",
        tp=1, peak_flops=200e9, efficiency=0.5, hbm_bytes_s=10e9, hbm_bytes=8e9,
        mem_util=0.25, activation_reserve_bytes=0.5e9, host_link_bytes_s=5e9,
        host_latency_s=0.05e-3, tp_link_bytes_s=1e18, step_overhead_s=2e-3,
        params=0.49e9, layers=24, d_model=896, kv_bytes_per_token=12288, weight_bytes=0.99e9,
    ),
]


# Fixed costs for the GPU profiles (seconds), each with where it comes from.
_OUR_HTTP = ("our own server's HTTP path, measured on the loaded 2-core CPU dev box by "
             "`stream2llm profile` (about 3-6 ms in, 5-14 ms out, 4-14 ms per chunk reply), "
             "scaled down to a quiet server-class host CPU")  # fmt: skip
GPU_FIXED: dict[str, float | int | dict[str, str]] = {
    "request_s": 3e-3,
    "chunk_s": 2e-3,
    "ack_s": 2e-3,
    "step_s": 1.5e-3,
    "sampled_token_s": 5e-5,
    "sample_tile": 1,
    "tokenize_s_per_1k": 5e-4,
    "source": {
        "request_s": f"ESTIMATE: first token -> client (event, API room, HTTP response), from "
        f"{_OUR_HTTP}. vLLM reports its HTTP API server at 33% of the execution time of Llama "
        "3 8B on one H100 before v0.6.0 (blog.vllm.ai/2024/09/05/perf-update.html).",
        "chunk_s": f"ESTIMATE: client send -> worker has the chunk, from {_OUR_HTTP}.",
        "ack_s": f"ESTIMATE: worker -> client chunk reply, from {_OUR_HTTP}.",
        "step_s": "ESTIMATE: CPU work per step not hidden behind the GPU (scheduling, batch "
        "metadata, launches). vLLM v0.6.0's profile of Llama 3 8B on one H100 puts scheduling "
        "and input preparation at 29% of execution time (blog.vllm.ai/"
        "2024/09/05/perf-update.html); SGLang v0.4's overlap scheduler hides most of it "
        "(lmsys.org/blog/2024-12-04-sglang-v0-4, 'zero-overhead batch scheduler'). 1.5 ms is "
        "our estimate of what is left per step without overlap for streaming chunks.",
        "sampled_token_s": "ESTIMATE: sampler per sampled row (top-k/top-p/argmax over a "
        "128K vocabulary, a few tens of microseconds on an H100); the LM head's weight read "
        "is already in the step curve's weight bytes.",
        "tokenize_s_per_1k": "ESTIMATE: HF `tokenizers` (Rust) documents under 20 s per GB of "
        "text on a server CPU, multi-threaded (github.com/huggingface/tokenizers README), "
        "about 0.1 ms per 1K tokens; one request is tokenized on one thread plus Python "
        "overhead, so 0.5 ms per 1K tokens.",
    },
}


def step_seconds(hw: Hardware, tokens: int, pairs: float, kv_read_tokens: float,
                 overhead: bool = True) -> float:  # fmt: skip
    flops = 2 * hw.params * tokens + 4 * hw.layers * hw.d_model * pairs
    compute = flops / (hw.tp * hw.peak_flops * hw.efficiency)
    if hw.tp > 1:  # two all-reduces per layer of the activations
        compute += 2 * hw.layers * tokens * hw.d_model * 2 / hw.tp_link_bytes_s
    memory = (hw.weight_bytes + kv_read_tokens * hw.kv_bytes_per_token) / hw.tp / hw.hbm_bytes_s
    return (hw.step_overhead_s if overhead else 0.0) + max(compute, memory)


def kv_capacity_tokens(hw: Hardware) -> int:
    per_gpu = hw.hbm_bytes * hw.mem_util - hw.weight_bytes / hw.tp - hw.activation_reserve_bytes
    return int(per_gpu * hw.tp / hw.kv_bytes_per_token)


def derive(hw: Hardware) -> dict[str, Any]:
    ns = [16 << i for i in range(14)]  # 16 .. 128K, as the artifact profiles
    # the curves are the forward pass; the step overhead is fixed.step_s
    prefill = [step_seconds(hw, n, attention_pairs(0, n), n, False) for n in ns]
    swap = [
        2 * (n * hw.kv_bytes_per_token / hw.tp / hw.host_link_bytes_s + hw.host_latency_s)
        for n in ns
    ]
    batches, contexts, dec = [], [], []
    for b in (1, 8, 32, 128, 256):
        for ctx in (1024, 4096, 16384):
            batches.append(b)
            contexts.append(ctx)
            dec.append(step_seconds(hw, b, b * ctx, b * ctx, False))
    return {
        "name": hw.name,
        "derived": True,
        "description": hw.description,
        "assumptions": asdict(hw)
        | {
            "model": "step = overhead + max(compute, memory); see scheduler/derive_profiles.py",
            "kv_pool": "HBM*mem_util - weights/tp - activation reserve, per GPU, times tp",
        },
        "kv_bytes_per_token": hw.kv_bytes_per_token,
        "kv_capacity_tokens": kv_capacity_tokens(hw),
        "prefill": {"tokens": ns, "seconds": [round(t, 7) for t in prefill]},
        "swap": {"tokens": ns, "seconds": [round(t, 7) for t in swap]},
        "decode": {"batch": batches, "context": contexts, "seconds": [round(t, 7) for t in dec]},
        "fixed": _fixed(hw),
    }


def _fixed(hw: Hardware) -> dict[str, object]:
    """GPU_FIXED, with this hardware's step overhead (the CPU placeholder keeps its own)."""
    out: dict[str, object] = {**GPU_FIXED, "step_s": hw.step_overhead_s}
    if hw.tp == 1:  # the CPU placeholder: nothing published applies
        out = {"step_s": hw.step_overhead_s,
               "source": {"step_s": "PLACEHOLDER estimate; measure with `stream2llm profile`"}}
    return out


def main() -> None:
    PROFILE_DIR.mkdir(exist_ok=True)
    for hw in HARDWARE:
        path = PROFILE_DIR / f"{hw.name}.json"
        if path.exists() and not json.loads(path.read_text()).get("derived", False):
            print(f"{path}: measured, kept")
            continue
        path.write_text(json.dumps(derive(hw), indent=1) + "\n")
        print(f"{path}: derived")


if __name__ == "__main__":
    main()
