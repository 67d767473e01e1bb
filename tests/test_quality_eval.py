"""`stream2llm eval-quality` end to end: a real server, both retrievers, two questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.qa_data import load_questions
from retrievers.corpus import builtin_passages
from retrievers.hnsw import HnswIndex
from srt_ext.engines.reference.model_store import TINY_MODEL


@pytest.mark.slow
def test_eval_quality_limit_2(tmp_path: Path) -> None:
    # a small index that holds the first two questions' gold passages among others
    gold = {pid for q in load_questions(limit=2) for pid in q.passage_ids}
    passages = [p for i, p in enumerate(builtin_passages()) if p.id in gold or i % 15 == 0]
    HnswIndex.build(passages).save(tmp_path / "idx")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "stream2llm.cli", "eval-quality", "--limit", "2",
         "--index", str(tmp_path / "idx"), "--model-path", TINY_MODEL, "--prompt", "plain",
         "-k", "2", "--max-new-tokens", "4", "--search-delay", "0.05", "--page-delay", "0.05",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "identical outputs streaming vs non-streaming: 4/4" in proc.stdout
    report = json.loads((out / "quality.json").read_text())
    assert report["questions"] == 2 and report["retrievers"] == ["search", "crawl"]
    summary = {row["retriever"]: row for row in report["summary"]}
    assert set(summary) == {"search", "crawl"}
    for row in summary.values():
        assert row["questions"] == 2 and row["identical"] == 1.0
        for key in ("recall@k", "contains_acc", "token_f1"):
            assert 0.0 <= row[key] <= 1.0
    assert len(report["records"]) == 4
    for rec in report["records"]:
        assert rec["same_output"] is True
        chunks = [p["chunk"] for p in rec["points"]]
        assert chunks == list(range(1, len(chunks) + 1))  # one answer per chunk, final last
        assert len(rec["points"][-1]["passage_ids"]) <= 2  # k = 2
        times = [p["t_chunk_s"] for p in rec["points"]]
        assert times == sorted(times)
    for retriever in ("search", "crawl"):
        rows = [c for c in report["curve"] if c["retriever"] == retriever]
        assert rows and rows[-1]["answered_final"] == 1.0
        # the curve's last point is the final context: it matches the summary
        assert rows[-1]["contains_acc"] == summary[retriever]["contains_acc"]
    assert (out / "quality_curve.png").stat().st_size > 1000
