"""`stream2llm validate` end to end on SGLang's engine (the default): one small case
replayed through SGLang's own server with our plugin (fcfs, preemption cost, the
profile as its cost model), both modes, and simulated with the same profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stream2llm.cli import main


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_validate_one_case_on_sglang(tmp_path: Path) -> None:
    prof = tmp_path / "prof.json"
    assert main(["profile", "--model-path", "tiny-random", "--max-tokens", "1024",
                 "--repeats", "3", "--warmup", "1", "--decode-batches", "1", "--threads", "1",
                 "--out", str(prof)]) == 0  # fmt: skip
    out = tmp_path / "v"
    rc = main(["validate", "--cases", "crawler-qps3", "--num-queries", "6", "--profile", str(prof),
               "--out", str(out), "--worker-cpu", "-1", "--quiet"])  # fmt: skip
    assert rc in (0, 1)  # 1: some cell out of tolerance (6 queries on a shared box)
    data = json.loads((out / "validate.json").read_text())
    assert data["engine"] == "sglang" and data["engine_speed"]["per_server"] == [1.0]
    assert [c["name"] for c in data["cases"]] == ["crawler-qps3"]
    sides = data["ttft_s"]["crawler-qps3"]
    for kind in ("measured", "simulated"):
        for mode in ("non-streaming", "streaming"):
            side = sides[kind][mode]
            # every query answered on SGLang's server and in the simulator, TTFTs real
            assert side["unfinished"] == 0 and len(side["ttft_s"]) == 6
            assert all(0 < t < 60 and math.isfinite(t) for t in side["ttft_s"])
    rows = [r for r in data["rows"] if r["verdict"] != "-"]
    assert len(rows) == 8 and {r["verdict"] for r in rows} <= {"pass", "FAIL"}
    assert rc == (1 if any(r["verdict"] == "FAIL" for r in rows) else 0)
    # the validation's profile is the SGLang one it was given, its HTTP terms kept
    used = json.loads(Path(data["profile"]).read_text())
    assert used["machine"]["engine"] == "sglang" and used["fixed"]["request_s"] > 0
    assert data["legs"] == []  # SGLang stamps no per-leg times


def test_cross_pass_calibration_is_refused_on_sglang(tmp_path: Path) -> None:
    """SGLang's scheduler reports no step times (engine_step_s 0): a cross-pass factor
    would be 0, so the option is refused by name, before anything starts."""
    assert main(["validate", "--calibrate", "cross-pass", "--out", str(tmp_path)]) == 2
