"""Exactness on the real default model (SmolLM2-135M-Instruct), through the server.

Chat-template prompts are streamed as TEXT chunks laid out by retrievers/prompt.py
(the server tokenizes each chunk on its own), as append chunks and as update
versions, four streams at once, against a KV pool too small for all of them, so
preemption really runs (recompute and swap). The reference is one-shot greedy
decoding of the whole conversation's text on a separate in-process engine (its own cache: nothing
the server computed is reused). Short prompts and few new tokens: the real model's
exact CPU path is not fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from server_helpers import server

from retrievers.corpus import load_corpus
from retrievers.prompt import PromptLayout
from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.client.rest import AsyncClient
from srt_ext.engines.reference import ReferenceEngine
from srt_ext.engines.reference.drive import greedy_generate
from srt_ext.engines.reference.model_store import DEFAULT_MODEL, resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NEW = 3
QUESTIONS = ["What does the with statement do?", "What does break do in a loop?"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def cases(model_dir: Path) -> list[dict]:
    return build_cases(model_dir)


def build_cases(model_dir: Path) -> list[dict]:
    """Two questions, each with two short passages (and a third for update mode)."""
    layout = PromptLayout.from_model_dir(model_dir)
    p = load_corpus(None, limit=40)
    out = []
    for i, q in enumerate(QUESTIONS):
        docs = [layout.piece(d.text[:110]) for d in (p[3 * i], p[3 * i + 1], p[3 * i + 2])]
        out.append({
            "append": [layout.head + docs[0], docs[1], layout.tail(q)],
            "update": [layout.whole([docs[2], docs[0]], q), layout.whole(docs[:2], q)],
            "whole": layout.whole(docs[:2], q),
        })  # fmt: skip
    return out


@pytest.fixture(scope="module")
def reference(model_dir: Path, cases: list[dict]) -> list[list[int]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        room = TokenizerRoom(model_dir)
        eng = ReferenceEngine(DEFAULT_MODEL, kv_capacity_tokens=512)
        return [greedy_generate(eng, room.encode(c["whole"], first=True), NEW) for c in cases]
    finally:
        torch.set_num_threads(threads)


async def _streams(url: str, cases: list[dict], kind: str) -> list[tuple[int, list[int]]]:
    """Open all four streams with their first piece; once their partial prefills
    have pushed the pool into preemption, send the remaining pieces."""
    jobs = [(i, mode) for i in range(len(cases)) for mode in ("append", "update")]
    async with AsyncClient(url) as ac:
        rids = [await ac.open_stream(mode=mode, sampling_params={"max_new_tokens": NEW},
                                     text=cases[i][mode][0]) for i, mode in jobs]  # fmt: skip
        for _ in range(600):
            if (await ac.stats())["preemptions"][kind] > 0:
                break
            await asyncio.sleep(0.2)

        async def rest(rid: str, pieces: list[str]) -> list[int]:
            for j, text in enumerate(pieces[1:], 1):
                await ac.send_chunk(rid, text=text, final=j == len(pieces) - 1)
            return list((await ac.result(rid))["output_ids"])

        outs = await asyncio.gather(*(rest(r, cases[i][mode]) for r, (i, mode)
                                      in zip(rids, jobs, strict=True)))  # fmt: skip
        return [(i, o) for (i, _), o in zip(jobs, outs, strict=True)]


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_streamed_chat_prompts_equal_one_shot(cases, reference, preemption) -> None:
    lengths = [len(TokenizerRoom(resolve_model(None)).encode(c["whole"])) for c in cases]
    pool = max(lengths) + 2 * NEW + 16  # one stream fits; four first pieces do not
    assert pool < sum(lengths)
    with server(model_path=DEFAULT_MODEL, max_total_tokens=pool, token_budget=32,
                preemption=preemption, scheduler="fcfs") as h, h.client() as c:  # fmt: skip
        for i, out in asyncio.run(_streams(h.url, cases, preemption)):
            assert out == reference[i], (preemption, i)
        st = c.stats()
        assert st["preemptions"][preemption] > 0, st
        assert st["streams_open"] == 0 and st["kv_pinned_tokens"] == 0
