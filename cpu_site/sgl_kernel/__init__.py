"""stream2llm's stand-in for ``sgl_kernel`` on the CPU install (never on a GPU).

SGLang 0.5.23 with ``SGLANG_USE_CPU_ENGINE=1`` imports a handful of names from
``sgl_kernel`` at module level (``if _is_cpu: from sgl_kernel import ...``); the
real package ships those as C++ ops built for AMX machines and is not on PyPI.
Everything else SGLang wants from ``sgl_kernel`` it imports under ``try``, so
those names (and every submodule, e.g. ``sgl_kernel.scalar_type``) stay absent
here and SGLang takes its own fallbacks.

Of the names SGLang imports on its CPU path, the ones the plain (non-speculative)
serving path can call compute the op in torch, checked against SGLang's own
Triton/reference semantics in ``tests/test_sgl_kernel_standin.py``. The
speculative-decoding ones raise ``NotImplementedError`` naming the op: stream2llm
never enables speculative decoding, and a silent wrong answer would be worse.

``STREAM2LLM_SGL_KERNEL_TRACE=FILE`` appends one line per call (``pid name``),
which is how the set of called ops was found (docs/sglang-engine.md).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

import torch

__version__ = "0.0.0+stream2llm.cpu"
STREAM2LLM_STANDIN = True

_TRACE = os.environ.get("STREAM2LLM_SGL_KERNEL_TRACE")


def _trace(name: str) -> None:
    if _TRACE:
        with open(_TRACE, "a") as f:
            f.write(f"{os.getpid()} {name}\n")


def assign_req_to_token_pool_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor,
                                 out_cache_loc: torch.Tensor, pool_len: int) -> None:  # fmt: skip
    """Row ``req_pool_indices[i]`` of ``req_to_token`` gets, at columns
    ``[start_offset[i], end_offset[i])``, the next ``end - start`` entries of
    ``out_cache_loc`` (consumed in request order), as SGLang's Triton kernel
    ``mem_cache.allocation.assign_req_to_token_pool`` writes them."""
    _trace("assign_req_to_token_pool_cpu")
    assert req_to_token.shape[1] == pool_len
    starts, ends = start_offset.tolist(), end_offset.tolist()
    rows = req_pool_indices.tolist()
    pos = 0
    for row, s, e in zip(rows, starts, ends, strict=True):
        n = e - s
        if n > 0:
            req_to_token[row, s:e] = out_cache_loc[pos:pos + n].to(req_to_token.dtype)
        pos += n


def copy_all_layer_kv_cache_cpu(data_ptrs: torch.Tensor, strides: torch.Tensor,
                                tgt_loc: torch.Tensor, src_loc: torch.Tensor) -> None:  # fmt: skip
    """For every KV buffer ``b`` (raw address ``data_ptrs[b]``, row size
    ``strides[b]`` bytes), copy row ``src_loc[j]`` onto row ``tgt_loc[j]``. All
    source rows are read before any target is written (the Triton kernel's
    load-then-store, safe when the two sets overlap)."""
    _trace("copy_all_layer_kv_cache_cpu")
    if tgt_loc.numel() == 0:
        return
    src, tgt = src_loc.long(), tgt_loc.long()
    rows = int(max(int(src.max()), int(tgt.max()))) + 1
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        raw = (ctypes.c_uint8 * (rows * stride)).from_address(ptr)
        buf = torch.frombuffer(raw, dtype=torch.uint8).view(rows, stride)
        buf[tgt] = buf[src].clone()


def _unsupported(name: str) -> Callable[..., Any]:
    def op(*args: Any, **kwargs: Any) -> Any:
        _trace(name)
        raise NotImplementedError(
            f"sgl_kernel.{name}: not available in stream2llm's CPU stand-in for sgl_kernel "
            "(speculative decoding is not supported on the CPU install; see docs/sglang-engine.md)"
        )

    op.__name__ = op.__qualname__ = name
    return op


# SGLang's CPU path imports these at module level (kernels/ops/speculative/*):
# only reachable with --speculative-algorithm, which stream2llm never sets.
UNSUPPORTED = (
    "rotate_input_ids_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
)
IMPLEMENTED = ("assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu")

for _name in UNSUPPORTED:
    globals()[_name] = _unsupported(_name)
del _name
