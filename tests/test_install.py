"""The install decisions of docs/install.md hold on the stack the suite runs on."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import radix_stream._sglang as shim

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_sglang_is_the_pinned_release() -> None:
    import sglang

    assert sglang.__version__ == shim.SGLANG_VERSION == "0.5.23"


@pytest.mark.parametrize(
    "module",
    [
        "sglang.srt.mem_cache.radix_cache",
        "sglang.srt.mem_cache.memory_pool",
        "sglang.srt.mem_cache.allocator",
        "sglang.srt.mem_cache.registry",
        "sglang.srt.managers.schedule_policy",
        "sglang.srt.disaggregation.base.conn",
        "sglang.lang.backend.runtime_endpoint",
    ],
)
def test_sglang_modules_we_build_on_import(module: str) -> None:
    importlib.import_module(module)


def test_torchvision_placeholder_fails_loudly_on_use() -> None:
    if not shim.torchvision_is_placeholder():
        pytest.skip("a real torchvision is installed (GPU stack)")
    import torchvision.transforms as T  # noqa: N812
    from transformers.utils.import_utils import is_torchvision_available

    assert is_torchvision_available() is False  # transformers was told the truth
    with pytest.raises(ImportError, match="torchvision is not installed"):
        T.Compose([])


def test_every_dependency_has_a_lower_bound() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    for dep in deps:
        assert re.search(r"(>=|==)", dep), f"{dep} has no lower bound"
    assert "sglang==0.5.23" in project["optional-dependencies"]["gpu"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(bash scripts/dev\.sh \w+)\s*$", readme, re.M)
    assert commands[:2] == ["bash scripts/dev.sh demo", "bash scripts/dev.sh test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nbash scripts/dev.sh test\n" in ci
