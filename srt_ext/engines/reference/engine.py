"""ReferenceEngine: one batched forward step over prefill chunks and decode tokens.

The scheduler decides *what* runs in a step (chunks of several streams, decode
tokens of several requests) and which KV slots they use (StreamKVCache over
``engine.allocator``); the engine only computes. On CPU it runs an exact layout, so a stream's greedy
output depends only on its final token ids, never on chunking, batching or
preemption (see tiles.py/attention.py): float32 on probed, batch-invariant tile
sizes by default, or float64 on fixed 16-row tiles (``dtype=torch.float64``).
Results are promised at the torch thread count the engine was built with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from srt_ext.engines.reference.kv import KVMover, make_kv_pool
from srt_ext.engines.reference.llama import LlamaModel, Span, StepBatch
from srt_ext.engines.reference.model_store import resolve_model


@dataclass
class ForwardItem:
    rid: str
    input_ids: list[int]  # the new tokens to compute (a prefill chunk, or one decode token)
    start: int  # position of input_ids[0]
    prefix_slots: torch.Tensor  # KV slots of positions [0, start)
    new_slots: torch.Tensor  # KV slots for positions [start, start + len(input_ids))
    sample: bool  # return a token sampled after the last input token (else None)
    temperature: float = 0.0  # 0 = greedy; else seeded sampling
    seed: int | None = None
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut


@dataclass
class ProfilePoint:
    n_tokens: int
    prefill_s: float
    swap_out_s: float
    swap_in_s: float


def sample_token(logits: torch.Tensor, item: ForwardItem, position: int) -> int:
    """Greedy (argmax, first index on ties) or seeded top-k/top-p sampling.

    The generator is seeded from (seed, position) so a sampled continuation is
    reproducible and, like greedy, independent of how the prompt was chunked.
    """
    if item.temperature <= 0.0:
        return int(torch.argmax(logits).item())
    scores = logits.detach().to("cpu", torch.float64) / item.temperature
    if item.top_k > 0:
        kth = torch.topk(scores, min(item.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if item.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_p, 0) - sorted_p > item.top_p
        probs = probs.scatter(0, order[drop], 0.0)
        probs = probs / probs.sum()
    gen = torch.Generator().manual_seed(((item.seed or 0) * 1_000_003 + position) % 2**63)
    return int(torch.multinomial(probs, 1, generator=gen).item())


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


DTYPE_ENV = "STREAM2LLM_DTYPE"  # what `serve/profile --dtype` set for their worker processes


def parse_dtype(name: str | None) -> torch.dtype | None:
    """CLI spelling -> dtype; None/""/"auto" = the device's default (CPU float32, GPU bf16)."""
    if name in (None, "", "auto"):
        return None
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}") from None


class ReferenceEngine:
    """A Llama checkpoint (default: SmolLM2-135M-Instruct, model_store.py) over SGLang's KV pool."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        kv_capacity_tokens: int = 16384,
        exact: bool | None = None,
        tile_rows: int = 16,
        attn_block: int = 16,
        sized: bool | None = None,
        warm: bool = False,
    ) -> None:
        self.device = torch.device(device)
        on_cpu = self.device.type == "cpu"
        dtype = dtype or parse_dtype(os.environ.get(DTYPE_ENV))
        self.dtype = dtype or (torch.float32 if on_cpu else torch.bfloat16)
        self.exact = on_cpu if exact is None else exact
        self.model_path = resolve_model(model_path)  # a name (default: SmolLM2) or a dir
        from srt_ext.engines.reference.config import LlamaArch

        arch = LlamaArch.from_dir(self.model_path)
        self.max_context_len = min(arch.max_position_embeddings, kv_capacity_tokens)
        self.model = LlamaModel(
            self.model_path,
            self.device,
            self.dtype,
            self.exact,
            max_positions=arch.max_position_embeddings,
            tile_rows=tile_rows,
            attn_block=attn_block,
            sized=sized,
        )
        self.arch = arch
        self.pool, self.allocator = make_kv_pool(
            kv_capacity_tokens, self.dtype, arch.num_kv_heads, arch.head_dim, arch.num_layers,
            self.device,
        )  # fmt: skip
        self.kv_capacity_tokens = kv_capacity_tokens
        self._tokenizer: Any = None
        if warm:  # a server or a profile: kernels for every shape now, not mid-request
            from srt_ext.engines.reference.exact_plan import warm_attention

            warm_attention(self.model, self.max_context_len)

    @property
    def tokenizer(self) -> Any:
        """Loaded lazily, offline: the model directory must ship its tokenizer."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        return self._tokenizer

    @property
    def eos_token_id(self) -> int | None:
        ids = self.arch.eos_token_ids
        return ids[0] if ids else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.arch.eos_token_ids

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size

    def kv_mover(self) -> KVMover:
        return KVMover(self.allocator)

    def _batch(self, items: list[ForwardItem]) -> StepBatch:
        ids: list[int] = []
        positions: list[int] = []
        new_slots: list[torch.Tensor] = []
        spans: list[Span] = []
        sample_index: list[int] = []
        for it in items:
            n = len(it.input_ids)
            if n == 0 or len(it.new_slots) != n or len(it.prefix_slots) != it.start:
                raise ValueError(
                    f"{it.rid}: {n} tokens, {len(it.new_slots)} new slots, "
                    f"{len(it.prefix_slots)} prefix slots for start {it.start}"
                )
            if it.start + n > self.max_context_len:
                raise ValueError(f"{it.rid}: {it.start + n} tokens > {self.max_context_len}")
            prefix = it.prefix_slots.to(self.device, torch.int64)
            new = it.new_slots.to(self.device, torch.int64)
            spans.append(Span(len(ids), n, it.start, torch.cat([prefix, new])))
            ids.extend(it.input_ids)
            positions.extend(range(it.start, it.start + n))
            new_slots.append(new)
            if it.sample:
                sample_index.append(len(ids) - 1)
        return StepBatch(
            token_ids=torch.tensor(ids, dtype=torch.int64, device=self.device),
            positions=positions,
            new_slots=torch.cat(new_slots),
            spans=spans,
            sample_index=sample_index,
        )

    def logits(self, items: list[ForwardItem]) -> list[torch.Tensor | None]:
        """Run one step; next-token logits of every sampling item (None otherwise)."""
        if not items:
            return []
        batch = self._batch(items)
        out = self.model.forward(batch, self.pool.k_buffer, self.pool.v_buffer)
        result: list[torch.Tensor | None] = []
        k = 0
        for it in items:
            result.append(out[k] if it.sample else None)
            k += int(it.sample)
        return result

    def forward(self, items: list[ForwardItem]) -> list[int | None]:
        """Run one step; the sampled next token of every sampling item (None otherwise)."""
        logits = self.logits(items)
        rows = [lg for lg in logits if lg is not None]
        # one argmax and one device->host copy for all greedy rows, not one sync per row
        greedy = torch.stack(rows).argmax(dim=-1).tolist() if rows else []
        out: list[int | None] = []
        k = 0
        for it, lg in zip(items, logits, strict=True):
            if lg is None:
                out.append(None)
                continue
            pos = it.start + len(it.input_ids)
            out.append(int(greedy[k]) if it.temperature <= 0.0 else sample_token(lg, it, pos))
            k += 1
        return out

    # --- cost-model profiling -------------------------------------------------

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def profile_prefill(self, n_tokens: int, repeats: int = 1) -> float:
        """Seconds to prefill ``n_tokens`` of one request from scratch (best of repeats)."""
        slots = self.allocator.alloc(n_tokens)
        if slots is None:
            raise RuntimeError(f"KV pool too small to profile {n_tokens} tokens")
        gen = torch.Generator().manual_seed(n_tokens)
        ids = torch.randint(0, self.vocab_size, (n_tokens,), generator=gen).tolist()
        item = ForwardItem("profile", ids, 0, slots[:0], slots, sample=True)
        best = float("inf")
        try:
            for _ in range(repeats):
                self._sync()
                t0 = time.perf_counter()
                self.forward([item])
                self._sync()
                best = min(best, time.perf_counter() - t0)
        finally:
            self.allocator.free(slots)
        return best

    def profile_swap(self, n_tokens: int, repeats: int = 1) -> tuple[float, float]:
        """(swap-out, swap-in) seconds for ``n_tokens`` of KV through the mover."""
        slots = self.allocator.alloc(n_tokens)
        if slots is None:
            raise RuntimeError(f"KV pool too small to profile {n_tokens} tokens")
        mover, out_s, in_s = self.kv_mover(), float("inf"), float("inf")
        try:
            for _ in range(repeats):
                t0 = time.perf_counter()
                host = mover.to_host(slots)
                t1 = time.perf_counter()
                mover.to_device(host, slots)
                self._sync()
                t2 = time.perf_counter()
                out_s, in_s = min(out_s, t1 - t0), min(in_s, t2 - t1)
        finally:
            self.allocator.free(slots)
        return out_s, in_s

    def profile_point(self, n_tokens: int, repeats: int = 1) -> ProfilePoint:
        out_s, in_s = self.profile_swap(n_tokens, repeats)
        return ProfilePoint(n_tokens, self.profile_prefill(n_tokens, repeats), out_s, in_s)
