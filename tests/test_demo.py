"""The README's main command runs end to end (quick mode)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream2llm.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "[4/4] results" in out
    # both retrievers ran, streaming and not, and gave the same tokens
    assert "vector search" in out and "crawl" in out
    assert "identical outputs streaming vs non-streaming: 2/2" in out
    assert (tmp_path / "demo_timeline.png").stat().st_size > 1000
