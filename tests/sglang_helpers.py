"""One SGLang server (``--engine sglang``) per test session, shared by every test
module that uses the ``sglang_server`` fixture; plus an ``engine_url`` fixture
parametrized over both engines.

Start-up costs ~1-2 min on the 2-core CI box (importing sglang in three
processes), so the server is started once, lazily, and stopped at exit. Use in a
test module with ``from sglang_helpers import sglang_server, engine_url  # noqa: F401``.
"""

from __future__ import annotations

import atexit
import collections
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

# one per pytest process, whichever module asks first
_SHARED: dict[str, SGLangServer] = {}

# small pool (start-up time is spent allocating it otherwise), one OMP thread
# per SGLang process (2 shared cores), the policy our streams use by default, and
# 64-token prefill chunks so a prompt of a few hundred tokens takes several steps
# (as the reference engine's token budget in the exactness tests)
DEFAULT_CONFIG: dict[str, Any] = {"model_path": TINY_MODEL, "max_total_tokens": 4096, "threads": 1,
                                  "chunked_prefill_size": 64, "policy": "ours",
                                  "preemption": "recompute"}  # swap: its own server, its own test
# every sgl_kernel stand-in call of the session's servers lands here (pid op)
SGL_KERNEL_TRACE = Path(tempfile.gettempdir()) / f"stream2llm-sgl-kernel-{os.getpid()}.trace"


def sgl_kernel_calls() -> collections.Counter[str]:
    """Ops of our sgl_kernel stand-in that SGLang called so far (by name)."""
    try:
        lines = SGL_KERNEL_TRACE.read_text().splitlines()
    except OSError:
        return collections.Counter()
    return collections.Counter(line.split()[1] for line in lines if line.strip())


def shared_sglang_server(**overrides: Any) -> SGLangServer:
    """The session's SGLang server, started on first use (config as
    ``SGLangServerConfig``; a different config starts a second one)."""
    cfg = {**DEFAULT_CONFIG, **overrides}
    cfg["env"] = {"STREAM2LLM_SGL_KERNEL_TRACE": str(SGL_KERNEL_TRACE), **cfg.get("env", {})}
    key = repr(sorted(cfg.items()))
    server = _SHARED.get(key)
    if server is None or not server.alive():
        server = SGLangServer(SGLangServerConfig(**cfg))
        server.start(progress=bool(os.environ.get("STREAM2LLM_TEST_PROGRESS")))
        atexit.register(server.stop)
        _SHARED[key] = server
    return server


@pytest.fixture(scope="session")
def sglang_server() -> Iterator[SGLangServer]:
    """SGLang's own server with our tree and hooks (SGLangStartupError with its log tail if it cannot start)."""
    yield shared_sglang_server()


@pytest.fixture(scope="module", params=["reference", "sglang"])
def engine_url(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """``(engine, base_url)`` for each engine: the reference server runs in this
    process (one per module), SGLang's is the shared one."""
    if request.param == "sglang":
        yield "sglang", shared_sglang_server().url
        return
    from server_helpers import server

    with server() as h:
        yield "reference", h.url
