"""Import SGLang's cache and memory-pool modules on the CPU stack.

sglang 0.5.23's config package imports ``torchvision.transforms`` at module level
(for image preprocessing of vision models), on the import path to
``mem_cache.radix_cache``. On a machine without a GPU we run CPU torch 2.13, and
no torchvision release on PyPI loads against it (its compiled ops are built for
the CUDA torch). Rather than pull ~5.5 GB of CUDA torch + torchvision into every
CPU environment, we let those imports succeed with a placeholder that raises a
clear ``ImportError`` the moment anything in it is *used*. Nothing in stream2llm
touches image preprocessing, so the placeholder is never used; when a real
torchvision is importable (the GPU install) the placeholder is never installed.
The decision is recorded in docs/install.md and tested in tests/test_install.py.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import NoReturn

SGLANG_VERSION = "0.5.23"
_MISSING_MESSAGE = (
    "torchvision is not installed (stream2llm's CPU stack runs without it); "
    "install the GPU stack (`pip install .[gpu]`) for SGLang's vision models"
)


class TorchvisionUnavailable:
    """Stands for any torchvision attribute; fails loudly only when used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> TorchvisionUnavailable:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return TorchvisionUnavailable(f"{self._name}.{attr}")

    def __call__(self, *args: object, **kwargs: object) -> NoReturn:
        raise ImportError(f"{self._name}: {_MISSING_MESSAGE}")

    def __repr__(self) -> str:
        return f"<unavailable {self._name}>"


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, attr: str) -> TorchvisionUnavailable:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return TorchvisionUnavailable(f"{self.__name__}.{attr}")


class PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every ``torchvision[.x]`` import with a placeholder module."""

    stream2llm_torchvision_placeholder = True

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        module.__stream2llm_placeholder__ = True  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def torchvision_is_placeholder() -> bool:
    module = sys.modules.get("torchvision")
    return bool(getattr(module, "__stream2llm_placeholder__", False))


def settle_transformers_view() -> None:
    """transformers asks ``find_spec("torchvision")`` (cached) to decide whether
    to use it; ask before the placeholder exists so it caches the truth: absent."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        return
    for name in ("is_torchvision_available", "is_torchvision_v2_available"):
        check = getattr(import_utils, name, None)
        if check is not None:
            check()


def ensure_sglang_importable() -> None:
    """Install the torchvision placeholder if (and only if) torchvision is missing
    or broken, then check that the pinned sglang is the one installed."""
    # the CPU install's start-up hook (cpu_site/stream2llm_cpu_boot.py) may already
    # have put a (lazy) placeholder finder in place: every marked finder counts
    if not any(getattr(f, "stream2llm_torchvision_placeholder", False) for f in sys.meta_path):
        real = importlib.util.find_spec("torchvision") is not None
        if real:
            try:
                import torchvision  # noqa: F401
            except Exception:  # a CUDA wheel against CPU torch fails to load its ops
                for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                    del sys.modules[name]
                real = False
        if not real:
            settle_transformers_view()
            sys.meta_path.insert(0, PlaceholderFinder())
    import sglang

    version = getattr(sglang, "__version__", None)
    if version != SGLANG_VERSION:
        raise ImportError(
            f"stream2llm needs sglang=={SGLANG_VERSION} (its cache API changes between "
            f"releases); found {version}. Run `bash scripts/dev.sh install`."
        )
