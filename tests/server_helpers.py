"""Shared helpers for the tests/test_server_*.py modules (a real server each)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.launch import ServerHandle, launch_server


@contextmanager
def server(**opts: Any) -> Iterator[ServerHandle]:
    """A real server on an ephemeral loopback port, one torch thread in the worker
    (2 shared cores; results are promised at a fixed thread count)."""
    opts.setdefault("threads", 1)
    opts.setdefault("model_path", TINY_MODEL)  # speed: the real default has its own tests
    with launch_server(**opts) as h:
        yield h


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 30000) for _ in range(n)]


def split(ids: list[int], rng: random.Random, max_parts: int = 5) -> list[list[int]]:
    """Random append chunks covering ``ids``."""
    cuts = sorted(rng.sample(range(1, len(ids)), min(len(ids) - 1, rng.randint(0, max_parts - 1))))
    bounds = [0, *cuts, len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def versions(target: list[int], rng: random.Random, k: int = 3) -> list[list[int]]:
    """Update-mode versions ending at ``target``; each shares a random prefix with
    the one before (so the server keeps KV up to a random LCP)."""
    out: list[list[int]] = []
    prev = target
    for _ in range(k - 1):
        lcp = rng.randint(0, len(prev))
        noise = [rng.randrange(1000, 30000) for _ in range(rng.randint(1, 20))]
        out.append(prev[:lcp] + noise)
        prev = out[-1]
    out.append(target)
    return out
