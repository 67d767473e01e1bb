"""The embedded tiny model: deterministic, cached atomically, loads offline."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoTokenizer

from srt_ext.engines.reference.tiny_model import DEFAULT_SEED, ensure_tiny_model

pytestmark = pytest.mark.timeout(300)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_creation_is_deterministic(tmp_path):
    a = ensure_tiny_model(root=tmp_path / "a")
    b = ensure_tiny_model(root=tmp_path / "b")
    assert a.name == b.name and a.name.startswith("tiny-llama-")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt"):
        assert digest(a / name) == digest(b / name)
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(root=tmp_path / "a") == a  # cached: not rebuilt
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    other = ensure_tiny_model(seed=DEFAULT_SEED + 1, root=tmp_path / "a")
    assert other != a and digest(other / "model.safetensors") != digest(a / "model.safetensors")


def test_concurrent_creation_is_atomic(tmp_path):
    code = "import sys; from srt_ext.engines.reference.tiny_model import ensure_tiny_model; print(ensure_tiny_model(root=sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    paths = {p.communicate(timeout=240)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    assert [d.name for d in tmp_path.iterdir()] == [paths.pop().rsplit("/", 1)[1]]


def test_loads_offline_with_real_tokenizer():
    path = ensure_tiny_model()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    assert cfg.model_type == "llama"
    assert cfg.vocab_size == len(tok) > 20_000
    assert cfg.eos_token_id == tok.sep_token_id
    text = "streaming retrieval context into a live language model request"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) > 5 and tok.decode(ids) == text
    assert json.loads((path / "config.json").read_text())["num_key_value_heads"] == 2
