"""The streaming tree plugs into SGLang through its own plugin machinery."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.registry import TreeCacheBuildContext, get_radix_cache_factory
from sglang.srt.plugins import GENERAL_PLUGINS_GROUP, load_plugins_by_group

from radix_stream import StreamingRadixCache
from radix_stream.sglang_plugin import BACKEND_NAME


def _ctx(**flags: bool) -> TreeCacheBuildContext:
    alloc = TokenToKVPoolAllocator(64, torch.int64, "cpu", None, False)
    params = CacheInitParams(
        disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=alloc, page_size=1
    )
    base = dict(is_hybrid_swa=False, is_hybrid_ssm=False, enable_hierarchical_cache=False)
    base.update(flags)
    return TreeCacheBuildContext(
        server_args=None, params=params, disable_radix_cache=False, tp_worker=None,
        model_config=None, tp_size=1, tp_rank=0, tp_group=None, **base,
    )


def test_entry_point_registers_the_backend() -> None:
    plugins = load_plugins_by_group(GENERAL_PLUGINS_GROUP)
    assert BACKEND_NAME in plugins, "pyproject entry point not installed"
    register, dist = plugins[BACKEND_NAME]
    register()
    register()  # idempotent: SGLang loads plugins in several processes
    factory = get_radix_cache_factory(BACKEND_NAME)
    assert factory is not None
    tree = factory(_ctx())
    assert isinstance(tree, StreamingRadixCache)
    assert tree.page_size == 1 and tree.evictable_size() == 0


def test_unsupported_model_kinds_are_refused_clearly() -> None:
    load_plugins_by_group(GENERAL_PLUGINS_GROUP)[BACKEND_NAME][0]()
    factory = get_radix_cache_factory(BACKEND_NAME)
    assert factory is not None
    with pytest.raises(ValueError, match="full-attention"):
        factory(_ctx(is_hybrid_swa=True))
