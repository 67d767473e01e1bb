"""Run at interpreter start-up on stream2llm's CPU install (a ``.pth`` line).

SGLang's server spawns its scheduler and detokenizer as fresh interpreters, so a
placeholder installed by ``import radix_stream`` in the parent never reaches
them. ``scripts/dev.sh`` writes ``stream2llm-cpu.pth`` into the CPU venv; its
two lines put this directory on ``sys.path`` (which also makes our ``sgl_kernel``
stand-in importable) and import this module, which installs the torchvision
placeholder of ``radix_stream/_sglang.py`` lazily: nothing heavy is imported here,
so every Python start in the venv pays only a ``find_spec``.

Never installed on the GPU stack (real torchvision and sgl_kernel there).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

# radix_stream/_sglang.py imports only the standard library at module level; it is
# loaded from its file so that the radix_stream package (which imports sglang)
# is not imported from inside an import of torchvision.
_SHIM_FILE = Path(__file__).resolve().parent.parent / "radix_stream" / "_sglang.py"


def _load_shim() -> Any:
    spec = importlib.util.spec_from_file_location("stream2llm_torchvision_shim", _SHIM_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _LazyTorchvisionFinder:
    """Serves ``radix_stream._sglang``'s torchvision placeholder on first import.

    ``stream2llm_torchvision_placeholder`` marks it for ``ensure_sglang_importable``
    (which then installs nothing more).
    """

    stream2llm_torchvision_placeholder = True

    def __init__(self) -> None:
        self._delegate: Any = None
        self._busy = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if self._busy or not (fullname == "torchvision" or fullname.startswith("torchvision.")):
            return None
        if self._delegate is None:
            self._busy = True  # transformers' own find_spec must see torchvision absent
            try:
                shim = _load_shim()
                shim.settle_transformers_view()
                self._delegate = shim.PlaceholderFinder()
            finally:
                self._busy = False
        return self._delegate.find_spec(fullname, path, target)


def install() -> None:
    """Add the lazy finder unless a real torchvision is installed (GPU stack)."""
    if any(getattr(f, "stream2llm_torchvision_placeholder", False) for f in sys.meta_path):
        return
    if importlib.util.find_spec("torchvision") is not None:
        return
    sys.meta_path.insert(0, _LazyTorchvisionFinder())  # type: ignore[arg-type]


install()
