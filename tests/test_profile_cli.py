"""`stream2llm profile` writes a measured profile that the scheduler's CostModel loads."""

from __future__ import annotations

import json

import pytest

from scheduler.cost_model import CostModel
from stream2llm.cli import main

pytestmark = pytest.mark.timeout(120)


def test_quick_profile_loads(tmp_path):
    out = tmp_path / "quick.json"
    argv = ["profile", "--model-path", "tiny-random", "--max-tokens", "64", "--repeats", "1", "--warmup", "0",
            "--decode-batches", "1,2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    prof = json.loads(out.read_text())
    assert prof["derived"] is False and prof["name"] == "quick"
    assert prof["prefill"]["tokens"] == [16, 32, 64] == prof["swap"]["tokens"]
    assert all(s > 0 for s in prof["prefill"]["seconds"] + prof["swap"]["seconds"])
    assert len(prof["decode"]["batch"]) == len(prof["decode"]["seconds"]) > 0
    assert prof["machine"]["device"] == "cpu" and "fit" in prof
    cm = CostModel.load(out)
    assert not cm.derived and cm.prefill_s(48) > 0 and cm.swap_s(48) > 0
    assert cm.kv_bytes_per_token == prof["kv_bytes_per_token"] > 0
