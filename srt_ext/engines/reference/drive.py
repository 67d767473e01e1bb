"""A minimal driver for the engine: streams fed in chunks, batched decode.

Not a scheduler: it exists so tests and eval/bench_engine.py can drive
``ReferenceEngine.forward`` with SGLang's allocator directly (slots from
``allocator.alloc``), independently of radix_stream's StreamKVCache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from srt_ext.engines.reference.engine import ForwardItem, ReferenceEngine


@dataclass
class DrivenStream:
    """One request: a prompt arriving in chunks of the given sizes, then greedy decode."""

    rid: str
    prompt: list[int]
    chunks: list[int]
    max_new_tokens: int
    slots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    computed: int = 0
    chunk_i: int = 0
    out: list[int] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None

    @property
    def done(self) -> bool:
        return len(self.out) >= self.max_new_tokens

    def next_item(self) -> ForwardItem:
        if self.chunk_i < len(self.chunks):
            n = self.chunks[self.chunk_i]
            ids = self.prompt[self.computed : self.computed + n]
            sample = self.computed + n == len(self.prompt)
        else:
            ids, sample = [self.out[-1]], True
        start = self.computed
        return ForwardItem(
            self.rid,
            ids,
            start,
            self.slots[:start],
            self.slots[start : start + len(ids)],
            sample=sample,
            temperature=self.temperature,
            seed=self.seed,
        )

    def accept(self, item: ForwardItem, token: int | None) -> None:
        self.computed += len(item.input_ids)
        if self.chunk_i < len(self.chunks):
            self.chunk_i += 1
        if token is not None:
            self.out.append(token)


def run_streams(
    engine: ReferenceEngine,
    streams: Sequence[DrivenStream],
    pick: Callable[[int, list[DrivenStream]], list[DrivenStream]] | None = None,
) -> dict[str, list[int]]:
    """Run until every stream has its tokens; ``pick(step, active)`` chooses who
    joins each step (default: everyone). Slots come from and return to the allocator."""
    for s in streams:
        assert sum(s.chunks) == len(s.prompt), f"{s.rid}: chunks do not cover the prompt"
        slots = engine.allocator.alloc(len(s.prompt) + s.max_new_tokens)
        if slots is None:
            raise RuntimeError("KV pool exhausted")
        s.slots = slots
    step = 0
    try:
        while True:
            active = [s for s in streams if not s.done]
            if not active:
                break
            chosen = (pick(step, active) if pick else active) or active[:1]
            items = [s.next_item() for s in chosen]
            for s, it, tok in zip(chosen, items, engine.forward(items), strict=True):
                s.accept(it, tok)
            step += 1
    finally:
        for s in streams:
            engine.allocator.free(s.slots)
    return {s.rid: list(s.out) for s in streams}


def greedy_generate(
    engine: ReferenceEngine,
    prompt: list[int],
    max_new_tokens: int,
    chunks: list[int] | None = None,
) -> list[int]:
    """Greedy continuation of ``prompt`` fed as ``chunks`` (default: one piece)."""
    stream = DrivenStream("g", prompt, chunks or [len(prompt)], max_new_tokens)
    return run_streams(engine, [stream])["g"]
