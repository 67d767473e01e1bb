"""The reference engine: a PyTorch Llama forward over SGLang's KV pool (issue 4).

Names are imported lazily so that ``srt_ext.engines.reference.tiny_model`` (and the CLI's
help) do not pay for importing SGLang.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ForwardItem": "srt_ext.engines.reference.engine",
    "ProfilePoint": "srt_ext.engines.reference.engine",
    "ReferenceEngine": "srt_ext.engines.reference.engine",
    "KVMover": "srt_ext.engines.reference.kv",
    "ensure_tiny_model": "srt_ext.engines.reference.tiny_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
