"""The README's main command runs end to end: quickly on the tiny model (the
plumbing: both retrievers, streaming and not, same tokens, the plot), and once,
briefly, on the real default model with the chat layout (real answers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)


def _demo(tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "stream2llm.cli", "demo", "--quick", "--out", str(tmp_path),
         "--threads", "1", *extra],
        capture_output=True, text=True, timeout=850,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "[5/5] results" in out
    assert "vector search" in out and "crawl" in out
    assert "identical outputs streaming vs non-streaming: 2/2" in out
    assert (tmp_path / "demo_timeline.png").stat().st_size > 1000
    return out


def test_demo_quick_tiny_model(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--model-path", "tiny-random", "--prompt", "plain")
    assert re.search(r"correct answers \(contain the gold answer\): [0-2]/2", out)


@pytest.mark.slow
def test_demo_quick_real_model(tmp_path: Path) -> None:
    """The default path: SmolLM2 with its chat template answers the first demo
    question (q06, gold None) from streamed vector-search context; the crawl's
    context differs, so only that it answered is checked there."""
    out = _demo(tmp_path)
    assert "q06: What is the name of the object returned by functions" in out
    answers = re.findall(r"(vector search|crawl) .*\| (correct|WRONG) +\| answer: '(.*)'", out)
    assert [a[0] for a in answers] == ["vector search", "crawl"], out
    assert answers[0][1] == "correct" and "None" in answers[0][2], out
    assert all(a[2] for a in answers), out
