"""HNSW retriever: index build/save/load/add, progressive search, update-mode traces."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from retrievers.corpus import Passage, builtin_passages, load_corpus, split_passages
from retrievers.hnsw import HnswIndex, IndexFormatError
from retrievers.progressive import (
    lcp_len,
    lcp_tokens,
    order_hits,
    progressive_search,
    progressive_search_sync,
)
from retrievers.stream import search_to_query
from stream2llm.trace import read_trace, write_trace

QUESTIONS = [
    "How does the with statement call __enter__ and __exit__?",
    "How are default argument values evaluated?",
    "What is the difference between is and == when comparing objects?",
    "How do generators and the yield expression work?",
    "What happens when an exception is raised inside a try block with finally?",
    "How are names resolved in nested scopes and closures?",
    "How do I format numbers with format specifiers?",
    "What are the rules for integer division and the modulo operator?",
]


def _memo_embedder():
    """Questions recur across tests; embedding each once keeps the suite fast."""
    from retrievers.embed import embed_texts

    memo: dict[str, np.ndarray] = {}

    def embed(texts):
        missing = [t for t in texts if t not in memo]
        if missing:
            memo.update(zip(missing, embed_texts(missing), strict=True))
        return np.stack([memo[t] for t in texts])

    return embed


@pytest.fixture(scope="module")
def index() -> HnswIndex:
    """~64 passages spread over all topics: a few seconds to embed on CPU."""
    return HnswIndex.build(builtin_passages()[::7], embedder=_memo_embedder())


def _versions(index, q, **kw):
    return list(progressive_search_sync(index, q, k=5, **kw))


@pytest.mark.parametrize("strategy", ["shards", "ef"])
def test_final_topk_set_equals_full_search(index, strategy):
    for q in QUESTIONS:
        vs = _versions(index, q, strategy=strategy)
        assert vs[-1].final and not any(v.final for v in vs[:-1])
        exact = {h.id for h in index.exact_vector(index.embed_question(q), 5)}
        high_ef = {h.id for h in index.query(q, 5, ef=len(index))}
        assert set(vs[-1].ids) == exact == high_ef


@pytest.mark.parametrize("order", ["stable", "score"])
def test_each_emission_changes_the_topk(index, order):
    for q in QUESTIONS:
        vs = _versions(index, q, order=order)
        for a, b in zip(vs, vs[1:], strict=False):
            if b.changed:
                assert set(a.ids) != set(b.ids) and a.text != b.text
            else:  # only the final marker may repeat the last version
                assert b.final and b.text == a.text
        assert all(v.changed for v in vs[:-1])
        assert all(v.lcp_chars == lcp_len(a.text, v.text) for a, v in zip(vs, vs[1:],
                                                                            strict=False))


def test_stable_order_keeps_survivors_in_place(index):
    for q in QUESTIONS:
        vs = _versions(index, q, order="stable")
        for a, b in zip(vs, vs[1:], strict=False):
            kept = [i for i in a.ids if i in b.ids]
            assert b.ids[: len(kept)] == kept
        first = _versions(index, q, order="score")[0]
        assert vs[0].ids == first.ids  # first emission: plain score order


def test_stable_order_lcp_at_least_score_order(index):
    def total(order, tokenize=None):
        n = 0
        for q in QUESTIONS:
            vs = [v for v in _versions(index, q, order=order) if v.changed]
            for a, b in zip(vs, vs[1:], strict=False):
                n += lcp_tokens(a.text, b.text, tokenize) if tokenize else lcp_len(a.text, b.text)
        return n

    assert total("stable") >= total("score") > 0
    assert total("stable", str.split) >= total("score", str.split)


def test_order_hits_unit():
    from retrievers.hnsw import Hit

    h = {c: Hit(i, c, c, c, s) for i, (c, s) in enumerate(zip("abcde", [.9, .8, .7, .6, .95],
                                                             strict=True))}
    prev = [h["a"], h["b"], h["c"]]
    new = [h["e"], h["a"], h["c"]]
    assert [x.id for x in order_hits(prev, new, "stable")] == ["a", "c", "e"]
    assert [x.id for x in order_hits(prev, new, "score")] == ["e", "a", "c"]


def test_async_matches_sync(index):
    async def collect():
        return [v async for v in progressive_search(index, QUESTIONS[0], k=5)]

    a = asyncio.run(collect())
    s = _versions(index, QUESTIONS[0])
    assert [v.text for v in a] == [v.text for v in s]
    assert all(x.t_s <= y.t_s for x, y in zip(a, a[1:], strict=False))


def test_save_load_and_incremental_add(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = HnswIndex.load(tmp_path / "idx", embedder=index.embedder)
    assert len(loaded) == len(index)
    q = QUESTIONS[1]
    assert [h.id for h in loaded.query(q, 5)] == [h.id for h in index.query(q, 5)]
    cap = loaded.hnsw.get_max_elements()
    extra = [Passage(f"zoo#{i}", "Zoo animals", f"The zebra number {i} eats grass at the zoo.")
             for i in range(cap - len(loaded) + 3)]  # forces a resize
    labels = loaded.add(extra)
    assert labels[0] == len(index) and len(loaded) == len(index) + len(extra)
    assert loaded.hnsw.get_max_elements() >= len(loaded)
    assert loaded.query("Which animal eats grass at the zoo?", 1)[0].id.startswith("zoo#")
    loaded.save(tmp_path / "idx")
    again = HnswIndex.load(tmp_path / "idx")
    assert len(again) == len(loaded)
    assert again.query("zebra at the zoo", 1)[0].id.startswith("zoo#")


def test_load_rejects_non_index(tmp_path):
    with pytest.raises(IndexFormatError, match="not an index directory"):
        HnswIndex.load(tmp_path)


def test_search_trace_round_trip(index, tmp_path):
    q = asyncio.run(search_to_query(index, QUESTIONS[2], qid="s1", k=4))
    assert q.mode == "update" and q.chunks[-1].final
    assert q.chunks[-1].text.endswith(f"Question: {QUESTIONS[2]}\nAnswer:")
    write_trace(tmp_path / "t.jsonl", [q])
    (back,) = read_trace(tmp_path / "t.jsonl")
    assert (back.qid, back.mode, back.meta) == (q.qid, q.mode, q.meta)
    assert [(c.text, c.final) for c in back.chunks] == [(c.text, c.final) for c in q.chunks]
    assert [c.t_s for c in back.chunks] == pytest.approx([c.t_s for c in q.chunks], abs=1e-6)
    assert back.meta["retriever"] == "hnsw"


def test_corpus_loaders(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Alpha\n\nfirst para\n\nsecond para\n")
    (tmp_path / "docs" / "b.txt").write_text("beta text")
    ps = load_corpus(tmp_path / "docs")
    assert [p.title for p in ps] == ["Alpha", "b"]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"id": "x", "title": "X", "text": "hello world"}) + "\n\n")
    assert load_corpus(jl) == [Passage("x#0", "X", "hello world")]
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "missing")
    long = "\n\n".join(" ".join(["word"] * 100) for _ in range(5))
    parts = split_passages("d", "D", long, target_words=180)
    assert len(parts) == 5 and all(len(p.text.split()) <= 260 for p in parts)
    assert len(builtin_passages()) > 300


def test_cli_index_build_and_query(tmp_path, capsys):
    from stream2llm.cli import main

    (tmp_path / "c").mkdir()
    for i, t in enumerate(["Cats purr when content.", "Rust prevents data races.",
                           "Volcanoes erupt molten rock."]):
        (tmp_path / "c" / f"{i}.txt").write_text(t)
    assert main(["index", "build", "--corpus", str(tmp_path / "c"), "--out",
                 str(tmp_path / "i")]) == 0
    assert main(["index", "query", "--index", str(tmp_path / "i"), "--question",
                 "why do cats purr", "-k", "2", "--progressive", "--shards", "2",
                 "--trace", str(tmp_path / "q.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "final" in out and "LCP kept" in out
    assert len(list(read_trace(tmp_path / "q.jsonl"))) == 1
    assert main(["index", "query", "--index", str(tmp_path / "nope"), "--question", "x"]) == 2
    assert main(["index", "build", "--corpus", str(tmp_path / "nope"), "--out", "x"]) == 2


def test_embedding_relevance_scorer(index):
    from retrievers.relevance import embedding_score

    good = embedding_score(QUESTIONS[0], ["The with statement calls __enter__, then __exit__."])
    bad = embedding_score(QUESTIONS[0], ["Tomatoes need sun and steady watering."])
    assert good > 0.3 > bad


def test_beam_strategy_emits_the_refining_pool_in_score_order(index):
    """The paper's driver: each version is the pool's top-k best first; the search
    converges to (nearly) the exact answer and every emission changes the set."""
    from retrievers.beam import KnnGraph, beam_steps

    graph = KnnGraph(index)
    assert all(graph.medoid not in nb for nb in graph.neighbours[graph.medoid:graph.medoid + 1])
    recall = []
    for q in QUESTIONS:
        vs = _versions(index, q, strategy="beam", order="score")
        assert vs[-1].final and all(v.changed for v in vs[:-1])
        for v in vs:
            scores = [h.score for h in v.docs]
            assert scores == sorted(scores, reverse=True)
        exact = {h.id for h in index.exact_vector(index.embed_question(q), 5)}
        recall.append(len(exact & set(vs[-1].ids)) / 5)
        rounds = list(beam_steps(index, graph, index.embed_question(q), 5))
        assert {h.id for h in rounds[-1][1]} == set(vs[-1].ids)
    assert np.mean(recall) >= 0.9
