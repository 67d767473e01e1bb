"""Registers the streaming tree with SGLang as radix-cache backend ``stream2llm``.

SGLang loads this through the ``sglang.srt.plugins`` entry point (pyproject.toml)
in its scheduler process; ``--radix-cache-backend stream2llm`` then builds our
tree wherever SGLang would build its own RadixCache. Registration is idempotent
because SGLang may load plugins in several processes and more than once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radix_stream.tree import StreamingRadixCache

BACKEND_NAME = "stream2llm"


def build_streaming_tree(ctx: Any) -> StreamingRadixCache:  # ctx: SGLang's, no stubs
    """Factory for SGLang's ``TreeCacheBuildContext``: same params as its own tree."""
    from radix_stream.tree import StreamingRadixCache

    if ctx.is_hybrid_swa or ctx.is_hybrid_ssm or ctx.enable_hierarchical_cache:
        raise ValueError(
            "the stream2llm radix cache supports full-attention models without "
            "hierarchical cache (no SWA/SSM hybrids, no --enable-hierarchical-cache)"
        )
    return StreamingRadixCache(ctx.params)


def register() -> None:
    """Entry point: make ``--radix-cache-backend stream2llm`` available."""
    import radix_stream._sglang  # noqa: F401  (makes sglang importable)

    from sglang.srt.mem_cache.registry import (
        register_radix_cache_backend,
        registered_radix_cache_backends,
    )

    if BACKEND_NAME not in registered_radix_cache_backends():
        register_radix_cache_backend(BACKEND_NAME, build_streaming_tree)
