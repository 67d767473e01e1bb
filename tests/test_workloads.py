"""Workload generators: fitted statistics, determinism, prompt structure, trace round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from eval.workloads import (
    CONTEXT_ID,
    PAPER_TARGETS,
    QUESTION_ID,
    TEMPLATE_IDS,
    TEMPLATE_WORDS,
    as_text,
    generate,
    iter_generate,
    load_workload,
    main,
    summarize,
)
from stream2llm.lcp import common_prefix_len as _lcp
from stream2llm.trace import read_trace, write_trace

HEAD = (*TEMPLATE_IDS, CONTEXT_ID)

# Relative tolerance per statistic at 3,000 seeded queries (sampling noise grows in the tail).
TOLERANCE = {
    "mean": 0.06, "p50": 0.06, "p5": 0.10, "p75": 0.08, "p95": 0.10, "p99": 0.15,
}  # fmt: skip


@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_statistics_match_paper(workload: str) -> None:
    got = summarize(iter_generate(workload, 1.0, 3000, seed=1, shape_only=True))
    for key, ref in PAPER_TARGETS[workload].items():
        stat = key.split("_")[1]
        if ref is None or stat not in TOLERANCE:
            continue
        assert got[key] == pytest.approx(ref, rel=TOLERANCE[stat]), key
    assert got["chunks_min"] == 1
    assert got["chunks_max"] <= PAPER_TARGETS[workload]["chunks_max"]
    assert got["chunks_max"] >= 0.7 * PAPER_TARGETS[workload]["chunks_max"]


@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_shape_only_has_the_same_shapes(workload: str) -> None:
    full = generate(workload, 2.0, 40, seed=3)
    shapes = list(iter_generate(workload, 2.0, 40, seed=3, shape_only=True))
    assert summarize(full) == summarize(shapes)
    for a, b in zip(full, shapes, strict=True):
        assert [c.t_s for c in a.chunks] == [c.t_s for c in b.chunks]
        assert [len(c.token_ids) for c in a.chunks] == [len(c.token_ids) for c in b.chunks]


@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_deterministic_and_prefix_stable(workload: str) -> None:
    a = generate(workload, 1.0, 12, seed=7)
    assert a == generate(workload, 1.0, 12, seed=7)
    assert a != generate(workload, 1.0, 12, seed=8)
    assert a[:5] == generate(workload, 1.0, 5, seed=7)  # more queries: same first ones
    fast = generate(workload, 4.0, 12, seed=7)  # qps only rescales arrivals
    assert [q.chunks for q in fast] == [q.chunks for q in a]
    assert [q.arrival_s for q in fast] == pytest.approx([q.arrival_s / 4 for q in a])


def test_poisson_arrivals() -> None:
    qs = list(iter_generate("crawler", 4.0, 3000, seed=2, shape_only=True))
    arr = np.array([q.arrival_s for q in qs])
    assert arr[0] == 0.0 and np.all(np.diff(arr) >= 0)
    gaps = np.diff(arr)
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.std() == pytest.approx(0.25, rel=0.08)  # exponential: sd == mean


def test_append_prompt_structure() -> None:
    qs = generate("crawler", 1.0, 60, seed=4, vocab_size=5000)
    assert any(len(q.chunks) == 1 for q in generate("crawler", 1.0, 400, seed=4))
    for q in qs:
        assert q.mode == "append" and q.chunks[-1].final
        assert not any(c.final for c in q.chunks[:-1])
        ids = [c.token_ids for c in q.chunks]
        assert ids[0][: len(HEAD)] == HEAD  # same template ids for every query
        assert all(QUESTION_ID not in c for c in ids[:-1])  # question only on the final chunk
        last = ids[-1]
        assert last.count(QUESTION_ID) == 1 and 10 <= len(last) - last.index(QUESTION_ID) - 1
        assert all(max(c) < 5000 and len(c) > 0 for c in ids)
        assert all(b.t_s >= a.t_s for a, b in zip(q.chunks, q.chunks[1:], strict=False))
        assert q.chunks[0].t_s > 0  # the first chunk comes after the search latency


def test_update_versions_share_prefixes() -> None:
    qs = generate("anns", 1.0, 80, seed=5)
    lcps: list[float] = []
    for q in qs:
        versions = [c.token_ids for c in q.chunks]
        question = versions[-1][versions[-1].index(QUESTION_ID) :]
        for v in versions:
            assert v[: len(HEAD)] == HEAD
            assert v[-len(question) :] == question  # every version ends with the question
        if len(versions) > 1:  # the end-of-search emission repeats the last pool
            assert versions[-1] == versions[-2]
        changed = versions[:-1] if len(versions) > 1 else versions
        for a, b in zip(changed, changed[1:], strict=False):
            n = _lcp(a, b)
            assert len(HEAD) <= n < min(len(a), len(b))  # shared head, then a changed document
            lcps.append(n / len(b))
    assert len(lcps) > 100
    assert min(lcps) < 0.2 and max(lcps) > 0.8  # the shared prefix varies in length
    assert QUESTION_ID in qs[0].final_token_ids()


def test_delay_multiplier_stretches_gaps_exactly() -> None:
    base = generate("anns", 2.0, 30, seed=6)
    slow = generate("anns", 2.0, 30, seed=6, delay_multiplier=30.0)
    for a, b in zip(base, slow, strict=True):
        assert a.arrival_s == b.arrival_s
        assert b.chunks[0].t_s == a.chunks[0].t_s  # the search latency is not stretched
        assert [c.token_ids for c in a.chunks] == [c.token_ids for c in b.chunks]
        ga, gb = np.diff([c.t_s for c in a.chunks]), np.diff([c.t_s for c in b.chunks])
        np.testing.assert_allclose(gb, 30.0 * ga, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("text", [False, True])
def test_jsonl_round_trip(tmp_path: Path, text: bool) -> None:
    qs = generate("crawler", 1.0, 8, seed=9, text=text) + generate("anns", 1.0, 8, seed=9)
    path = tmp_path / "trace.jsonl"
    assert write_trace(path, qs) == 16
    back = list(read_trace(path))
    assert back == [
        type(q)(q.qid, round(q.arrival_s, 6), q.mode, tuple(
            type(c)(round(c.t_s, 6), c.token_ids, c.text, c.final) for c in q.chunks
        ), q.max_new_tokens) for q in qs
    ]  # fmt: skip
    assert back[0].meta == qs[0].meta
    assert load_workload(str(path)) == back


def test_load_workload() -> None:
    assert load_workload("anns", qps=1.0, num_queries=3, seed=1) == generate("anns", 1.0, 3, 1)
    with pytest.raises(ValueError):
        load_workload("no-such-workload-or-file")
    with pytest.raises(ValueError):
        generate("crawler", 0.0, 3, 1)


def test_text_variant() -> None:
    ids = generate("crawler", 1.0, 10, seed=11)
    texts = as_text(ids)
    assert texts == generate("crawler", 1.0, 10, seed=11, text=True)
    for q, t in zip(ids, texts, strict=True):
        whole = "".join(c.text or "" for c in t.chunks)
        assert whole.startswith(" ".join(TEMPLATE_WORDS))
        assert len(whole.split()) == len(q.final_token_ids())  # one word per token
        assert "Question:" in (t.chunks[-1].text or "")
        assert all("Question:" not in (c.text or "") for c in t.chunks[:-1])
    assert summarize(texts)["tokens_mean"] == summarize(ids)["tokens_mean"]
    upd = as_text(generate("anns", 1.0, 10, seed=11))
    for q in upd:
        for a, b in zip(q.chunks, q.chunks[1:], strict=False):
            assert _common_words(a.text, b.text) >= len(TEMPLATE_WORDS)
    vocab = [f"\u0120{w}" for w in ("alpha", "bravo", "charlie", "delta")] * 20
    vocab += [f"\u0120word{chr(97 + i)}{chr(97 + j)}" for i in range(8) for j in range(8)]
    custom = as_text(ids[:1], tokenizer_vocab=vocab)[0]
    allowed = {v[1:] for v in vocab} | set(TEMPLATE_WORDS) | {"Context:", "Question:"}
    assert set("".join(c.text or "" for c in custom.chunks).split()) <= allowed


def _common_words(a: str | None, b: str | None) -> int:
    wa, wb = (a or "").split(), (b or "").split()
    return _lcp(tuple(map(hash, wa)), tuple(map(hash, wb)))


def test_main_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    out = main(num_queries=200, seed=0)
    assert "crawler (200 queries" in out and "anns (200 queries" in out
    assert "tokens_p95" in capsys.readouterr().out
    assert not math.isnan(summarize(generate("crawler", 1.0, 3, 0))["gap_p50_s"])
