"""`stream2llm eval-quality` end to end on SGLang's engine (the default): SGLang's
own server with our plugin, both retrievers, two questions, the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from eval.qa_data import load_questions
from eval.qa_metrics import best_f1, contains_gold
from retrievers.corpus import builtin_passages
from retrievers.hnsw import HnswIndex
from srt_ext.engines.reference.model_store import TINY_MODEL


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_quality_limit_2(tmp_path: Path) -> None:
    # a small index that holds the first two questions' gold passages among others
    questions = load_questions(limit=2)
    gold = {pid for q in questions for pid in q.passage_ids}
    passages = [p for i, p in enumerate(builtin_passages()) if p.id in gold or i % 15 == 0]
    index = HnswIndex.build(passages)
    index.save(tmp_path / "idx")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "stream2llm.cli", "eval-quality", "--limit", "2",
         "--index", str(tmp_path / "idx"), "--model-path", TINY_MODEL, "--prompt", "plain",
         "-k", "2", "--max-new-tokens", "4", "--search-delay", "0.05", "--page-delay", "0.05",
         "--max-total-tokens", "8192", "--out", str(out)],
        capture_output=True, text=True, timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # it ran on SGLang's engine, not on the reference server
    assert "starting SGLang's server with the stream2llm plugin" in proc.stdout
    assert "identical outputs streaming vs non-streaming: 4/4" in proc.stdout
    report = json.loads((out / "quality.json").read_text())
    assert report["questions"] == 2 and report["retrievers"] == ["search", "crawl"]
    assert report["complete"] is True and report["records_done"] == 4
    by_id = {q.id: q for q in questions}
    recs = report["records"]
    assert sorted((r["qid"], r["retriever"]) for r in recs) == sorted(
        (q.id, r) for q in questions for r in ("search", "crawl"))
    for rec in recs:
        q = by_id[rec["qid"]]
        assert rec["same_output"] is True and rec["stream_text"]
        chunks = [p["chunk"] for p in rec["points"]]
        assert chunks == list(range(1, len(chunks) + 1))  # one answer per chunk, final last
        times = [p["t_chunk_s"] for p in rec["points"]]
        assert times == sorted(times)
        final = rec["points"][-1]
        assert 1 <= len(final["passage_ids"]) <= 2  # k = 2
        # every score is the one its answer and context earn (qa_metrics), not a default
        for p in rec["points"]:
            assert p["correct"] == contains_gold(p["answer"], q.answers)
            assert p["f1"] == pytest.approx(best_f1(p["answer"], q.answers))
            assert p["recall"] == any(pid in q.passage_ids for pid in p["passage_ids"])
            assert 0 < p["ttft_s"] < 60 and math.isfinite(p["ttft_s"])  # client-side TTFT
        # client-side TTFTs of both sides: measured, positive, not the server's zeros
        assert 0 < rec["stream_ttft_s"] < 60 and 0 < rec["oneshot_ttft_s"] < 60
        assert final["ttft_s"] == rec["stream_ttft_s"]
        assert rec["input_tokens"] > 20
    # the search's final context is the index's exact top-2 (the progressive search ends
    # with the exact scan), so its recall is what the index gives, not just in [0, 1]
    for rec in (r for r in recs if r["retriever"] == "search"):
        top = {h.id for h in index.exact_vector(index.embed_question(rec["question"]), 2)}
        assert set(rec["points"][-1]["passage_ids"]) == top
    summary = {row["retriever"]: row for row in report["summary"]}
    assert set(summary) == {"search", "crawl"}
    for name, row in summary.items():
        mine = [r for r in recs if r["retriever"] == name]
        assert row["questions"] == 2 and row["identical"] == 1.0
        assert row["recall@k"] == sum(r["points"][-1]["recall"] for r in mine) / 2
        assert row["contains_acc"] == sum(r["points"][-1]["correct"] for r in mine) / 2
        assert row["ttft_stream_s"] == pytest.approx(sum(r["stream_ttft_s"] for r in mine) / 2)
    for retriever in ("search", "crawl"):
        rows = [c for c in report["curve"] if c["retriever"] == retriever]
        assert rows and rows[-1]["answered_final"] == 1.0
        # the curve's last point is the final context: it matches the summary
        assert rows[-1]["contains_acc"] == summary[retriever]["contains_acc"]
    assert (out / "quality_curve.png").stat().st_size > 1000

