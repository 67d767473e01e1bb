"""eval/tune_ours.py sweeps a constant of ours against plain non-streaming."""

from __future__ import annotations

import pytest

from eval.tune_ours import main
from scheduler.ours import OursPolicy


def test_sweep_prints_a_ratio_per_seed_and_value(capsys: pytest.CaptureFixture[str]) -> None:
    before = OursPolicy.HOLD_S
    assert main(["--set", "HOLD_S=0,1", "--seeds", "0,4", "--workloads", "anns:2",
                 "--num-queries", "12", "--jobs", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("HOLD_S=")]
    assert len(rows) == 2 and all(len(r.split()) == 3 for r in rows)  # name + two seeds
    assert "[6/6]" in out  # baseline + two values, for each of two seeds
    assert OursPolicy.HOLD_S == before  # only the worker processes were changed


def test_unknown_constant_is_a_cli_error() -> None:
    with pytest.raises(SystemExit) as e:
        main(["--set", "NOT_A_CONSTANT=1"])
    assert e.value.code == 2
