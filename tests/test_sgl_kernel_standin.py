"""Our CPU stand-in for ``sgl_kernel`` (cpu_site/sgl_kernel): the ops SGLang calls
compute what SGLang's own code computes, the rest fail loudly, and it defines
every name SGLang 0.5.23 imports from it on the CPU path (nothing more)."""

from __future__ import annotations

import ast
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "cpu_site" / "sgl_kernel" / "__init__.py"


@pytest.fixture(scope="module")
def sk() -> ModuleType:
    """The worktree's stand-in, loaded under its own name (whatever the venv has)."""
    spec = importlib.util.spec_from_file_location("sgl_kernel_standin", STANDIN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpu_path_imports() -> set[str]:
    """Names sglang imports from sgl_kernel at module level under an ``_is_cpu`` test
    (no ``try``: a missing name there breaks ``import``)."""
    import sglang

    root = Path(sglang.__file__).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        if "multimodal_gen" in path.parts or "test" in path.parts:
            continue
        src = path.read_text(errors="replace")
        if "from sgl_kernel import" not in src or "_is_cpu" not in src:
            continue
        for node in ast.parse(src).body:
            if isinstance(node, ast.If):
                _collect(node, False, names)
    return names


def _collect(node: ast.If, cpu: bool, out: set[str]) -> None:
    test = ast.unparse(node.test)
    here = cpu or (test.startswith("_is_cpu") and "amx" not in test)
    for branch, on in ((node.body, here), (node.orelse, cpu)):
        for stmt in branch:
            if isinstance(stmt, ast.If):
                _collect(stmt, on, out)
            elif on and isinstance(stmt, ast.ImportFrom) and stmt.module == "sgl_kernel":
                out.update(a.name for a in stmt.names)


def test_defines_exactly_what_sglang_imports_on_cpu(sk: ModuleType) -> None:
    wanted = _cpu_path_imports()
    assert "copy_all_layer_kv_cache_cpu" in wanted  # the scan sees the known one
    assert set(sk.IMPLEMENTED) | set(sk.UNSUPPORTED) == wanted
    for name in wanted:
        assert callable(getattr(sk, name))


def test_other_names_and_submodules_stay_absent(sk: ModuleType) -> None:
    """SGLang's fallbacks rely on ImportError for these."""
    for name in ("silu_and_mul", "rmsnorm", "merge_state_v2", "scalar_type"):
        assert not hasattr(sk, name)
    assert not (STANDIN.parent / "scalar_type.py").exists()
    assert list(STANDIN.parent.glob("*.py")) == [STANDIN]


@pytest.mark.parametrize("name", ["verify_tree_greedy_cpu", "rotate_input_ids_cpu"])
def test_unsupported_ops_fail_naming_the_op(sk: ModuleType, name: str) -> None:
    with pytest.raises(NotImplementedError, match=f"sgl_kernel.{name}"):
        getattr(sk, name)(torch.zeros(1))


def test_assign_req_to_token_pool_by_hand(sk: ModuleType) -> None:
    req_to_token = torch.full((4, 8), -1, dtype=torch.int32)
    out = torch.tensor([10, 11, 12, 20, 21, 30], dtype=torch.int64)
    # request in row 2 gets columns 3..5, row 0 gets 0..1, row 3 gets 7..7, row 1 nothing
    sk.assign_req_to_token_pool_cpu(torch.tensor([2, 0, 1, 3]), req_to_token,
                                    torch.tensor([3, 0, 5, 7]), torch.tensor([6, 2, 5, 8]),
                                    out, 8)  # fmt: skip
    want = torch.full((4, 8), -1, dtype=torch.int32)
    want[2, 3:6] = torch.tensor([10, 11, 12])
    want[0, 0:2] = torch.tensor([20, 21])
    want[3, 7] = 30
    assert torch.equal(req_to_token, want)


def test_assign_req_to_token_pool_random_vs_vectorised(sk: ModuleType) -> None:
    rng = random.Random(0)
    for _ in range(20):
        rows, cols = 6, 32
        bs = rng.randint(1, rows)
        pool_rows = rng.sample(range(rows), bs)
        starts = [rng.randint(0, cols) for _ in range(bs)]
        ends = [rng.randint(s, cols) for s in starts]
        n = sum(e - s for s, e in zip(starts, ends, strict=True))
        out = torch.randint(0, 10_000, (n,))
        got = torch.zeros(rows, cols, dtype=torch.int32)
        sk.assign_req_to_token_pool_cpu(torch.tensor(pool_rows), got, torch.tensor(starts),
                                        torch.tensor(ends), out, cols)  # fmt: skip
        # the same mapping as one boolean-mask scatter (row-major order of the mask
        # differs from request order, so sort the requests by row first)
        want = torch.zeros(rows, cols, dtype=torch.int32)
        offsets = torch.tensor([0, *torch.tensor(ends).sub(torch.tensor(starts)).cumsum(0).tolist()])
        for i in sorted(range(bs), key=lambda i: pool_rows[i]):
            mask = torch.zeros(rows, cols, dtype=torch.bool)
            mask[pool_rows[i], starts[i]:ends[i]] = True
            want[mask] = out[offsets[i]:offsets[i + 1]].int()
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_copy_all_layer_kv_cache_matches_sglang_native_move(sk: ModuleType, dtype: torch.dtype) -> None:
    from sglang.srt.mem_cache.memory_pool import move_kv_cache_native

    torch.manual_seed(0)
    layers, slots, heads, dim = 3, 64, 2, 8
    k = [torch.randn(slots, heads, dim).to(dtype) for _ in range(layers)]
    v = [torch.randn(slots, heads, dim).to(dtype) for _ in range(layers)]
    k_ref, v_ref = [t.clone() for t in k], [t.clone() for t in v]
    perm = torch.randperm(slots)
    src, tgt = perm[:12], perm[6:18]  # overlapping sets: sources read before writes
    move_kv_cache_native(k_ref, v_ref, tgt, src)
    bufs = k + v
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64)
    strides = torch.tensor([b[0].nbytes for b in bufs], dtype=torch.int64)
    sk.copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    for a, b in zip(k + v, k_ref + v_ref, strict=True):
        assert torch.equal(a, b)


def test_boot_puts_standin_and_placeholder_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What the venv's stream2llm-cpu.pth does for every process SGLang spawns."""
    import subprocess

    (tmp_path / "stream2llm-cpu.pth").write_text(f"{ROOT / 'cpu_site'}\nimport stream2llm_cpu_boot\n")
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]);"
        "import importlib.util as u; import sgl_kernel;"
        "import transformers.utils.import_utils as iu;"
        "import torchvision.transforms as t;"
        "print(sgl_kernel.STREAM2LLM_STANDIN, iu.is_torchvision_available(),"
        " getattr(sys.modules['torchvision'], '__stream2llm_placeholder__', False))"
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("torchvision")
        pytest.skip("a real torchvision is installed (GPU stack): no placeholder")
    except PackageNotFoundError:
        pass
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "True"]
