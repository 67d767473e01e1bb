"""The GPU session's prepared run (scripts/gpu-check.sh -> eval.gpu_check) and the
random-weight shapes it uses, checked on CPU: the wiring must work before any
device time is spent on it."""

from __future__ import annotations

import json

import pytest
import torch

from eval import gpu_check
from srt_ext.engines.reference import ReferenceEngine
from srt_ext.engines.reference.drive import greedy_generate
from srt_ext.engines.reference.shapes import (
    SHAPES,
    ensure_shape_model,
    is_random_init,
    iter_random_tensors,
)

pytestmark = pytest.mark.timeout(300)


def test_shape_model_is_deterministic_and_drawn_per_name(tmp_path):
    d = ensure_shape_model("tiny", seed=7, root=tmp_path)
    assert is_random_init(d) and not list(d.glob("*.safetensors"))
    assert ensure_shape_model("tiny", seed=7, root=tmp_path) == d  # reused, not rebuilt
    a = dict(iter_random_tensors(d, "cpu", torch.float32))
    b = dict(reversed(list(iter_random_tensors(d, "cpu", torch.float32))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    q0, q1 = (
        a["model.layers.0.self_attn.q_proj.weight"],
        a["model.layers.1.self_attn.q_proj.weight"],
    )
    assert not torch.equal(q0, q1)  # each tensor has its own stream
    other = dict(iter_random_tensors(ensure_shape_model("tiny", seed=8, root=tmp_path), "cpu",
                                     torch.float32))  # fmt: skip
    assert not torch.equal(other["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == SHAPES["tiny"]["vocab_size"]
    assert a["lm_head.weight"].shape == (cfg["vocab_size"], cfg["hidden_size"])


def test_shape_model_serves_and_tied_shapes_load(tmp_path):
    eng = ReferenceEngine(ensure_shape_model("tiny", root=tmp_path), kv_capacity_tokens=256)
    ids = eng.tokenizer("the quick brown fox")["input_ids"]
    out = greedy_generate(eng, ids, 4)
    assert len(out) == 4 and all(0 <= t < eng.vocab_size for t in out)
    assert out == greedy_generate(eng, ids, 4, [1, len(ids) - 1])
    with pytest.raises(ValueError, match="unknown model shape"):
        ensure_shape_model("llama-999b", root=tmp_path)


def test_gpu_check_smoke_on_cpu(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert set(report["seconds"]) == set(gpu_check.STEPS)
    tol = report["tolerance"]
    for model in ("embedded-tiny", "shape-tiny"):  # CPU exact path: chunking/batching change no bit
        assert tol[model]["max_abs_dlogit"] == 0.0
        assert tol[model]["argmax_agreement"] == 1.0
        n = tol[model]["greedy_identical"].split("/")
        assert n[0] == n[1]
    assert tol["embedded-tiny"]["argmax_agreement_vs_float64_cpu"] == 1.0
    assert tol["suggested"]["MAX_ABS_DLOGIT"] > 0
    prof = report["profile"]
    assert json.loads(open(prof["profile"]).read())["derived"] is False
    assert set(prof["derived_vs_measured"]) == {
        "h100-tp2-llama3-8b", "h200-tp2-llama3-8b", "h200-tp2-llama3-8b-mfu75"}  # fmt: skip
    if report["sglang"]["importable"]["sgl_kernel"] is False:
        assert not report["sglang"]["launchable"] and report["sglang"]["blockers"]


def test_gpu_check_refuses_cuda_without_a_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a CUDA device")
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--steps", "env"])
