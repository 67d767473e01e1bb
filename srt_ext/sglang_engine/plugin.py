"""Stale entry-point target (see the package docstring): forwards to the new home."""

from srt_ext.engines.sglang.plugin import register

__all__ = ["register"]
