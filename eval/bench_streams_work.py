"""bench-streams' workload and per-stream record, shared by every engine's client.

Every engine gets the same streams: for a seed, the same passages of the shipped
corpus (CPython's help topics, what the demo indexes), cut to a seeded word
count, and the same question of the shipped question set, laid out with the
model's chat template (``retrievers.prompt.PromptLayout``) so that the chunks
tokenize exactly as the whole prompt does: chunk 1 is the template head and the
first passage, the next chunks one passage each, the final chunk the question
and the template's closing tokens. A run differs between engines only in how the
client hands those texts to the server.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from eval.qa_data import load_questions
from retrievers.corpus import load_corpus
from retrievers.prompt import PLAIN_LAYOUT, ChatTemplateError, PromptLayout


@dataclass(frozen=True)
class StreamSpec:
    """One stream's chunk texts in order; the last is the final (question) chunk."""

    sid: int
    chunks: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """The whole prompt, as a one-shot client would send it."""
        return "".join(self.chunks)

    def cumulative(self) -> list[str]:
        """The prompt so far after each chunk (the last one is the whole prompt)."""
        return ["".join(self.chunks[: i + 1]) for i in range(len(self.chunks))]


@dataclass
class WarmRequest:
    """Stock baseline: one one-token ``/generate`` of the prompt so far."""

    sent_s: float
    latency_s: float = float("nan")
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


@dataclass
class StreamRecord:
    """What the client saw of one stream (times in seconds from the run's start).

    ``cached_tokens`` is the KV already computed when the final chunk arrived: the
    final chunk's ack on the stream API, ``meta_info.cached_tokens`` of the final
    ``/generate`` for the stock baseline. ``meta_cached_tokens`` is the result's own
    ``meta_info.cached_tokens`` (the same quantity as the server's result reports it).
    """

    sid: int
    engine: str
    chunk_sent_s: list[float] = field(default_factory=list)
    chunk_cached: list[int] = field(default_factory=list)  # ack cached_tokens per chunk
    chunk_tokens: list[int] = field(default_factory=list)  # input tokens after each chunk
    final_sent_s: float = float("nan")
    first_token_s: float = float("nan")
    input_tokens: int = 0
    cached_tokens: int = 0
    meta_cached_tokens: int | None = None
    ttft_server_s: float | None = None
    output_ids: list[int] = field(default_factory=list)
    warm: list[WarmRequest] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.input_tokens > 0

    @property
    def prefilled_share(self) -> float:
        """Share of the final input whose KV was computed before the final chunk."""
        return min(1.0, self.cached_tokens / self.input_tokens) if self.input_tokens else 0.0

    @property
    def ttft_client_s(self) -> float:
        """Final chunk sent -> first output token received (client clock)."""
        return self.first_token_s - self.final_sent_s

    @property
    def prefill_computed_tokens(self) -> int | None:
        """Stock only: input tokens the server computed over all requests of this
        stream (every warm request's uncached part plus the final's); None otherwise."""
        if not self.warm:
            return None
        return sum(w.prompt_tokens - w.cached_tokens for w in self.warm) + (
            self.input_tokens - self.cached_tokens
        )


def load_texts(words: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(passages with at least ``words[1]`` words, questions) from the shipped data."""
    passages = [" ".join(p.text.split()) for p in load_corpus(None)]
    long_enough = [p for p in passages if len(p.split()) >= words[1]]
    return long_enough, [q.question for q in load_questions()]


def build_specs(n: int, layout: PromptLayout, chunks: int = 3, words: tuple[int, int] = (70, 100),
                seed: int = 0) -> list[StreamSpec]:  # fmt: skip
    """``n`` streams of ``chunks`` passages cut to ``words`` (inclusive range) each,
    then a question; the same for a seed whatever the engine."""
    if n < 1 or chunks < 1 or not 1 <= words[0] <= words[1]:
        raise ValueError(f"need n >= 1, chunks >= 1, 1 <= words; got {n}, {chunks}, {words}")
    passages, questions = load_texts(words)
    rng = random.Random(seed)
    specs = []
    for sid in range(n):
        picked = rng.sample(passages, chunks)
        pieces = [layout.piece(" ".join(p.split()[: rng.randint(*words)])) for p in picked]
        question = rng.choice(questions)
        specs.append(StreamSpec(sid, (layout.head + pieces[0], *pieces[1:],
                                      layout.tail(question))))  # fmt: skip
    return specs


def layout_for(model_dir: str | Path) -> PromptLayout:
    """The model's chat-template layout; the plain layout when it ships no template
    (the tiny test model)."""
    try:
        return PromptLayout.from_model_dir(model_dir)
    except ChatTemplateError:
        return PLAIN_LAYOUT


async def sleep_until(t: float) -> None:
    """Sleep until ``time.perf_counter() >= t`` (at once if it has passed)."""
    await asyncio.sleep(max(0.0, t - time.perf_counter()))
