"""One server per engine for the whole test session: the suites that run against
both ``--engine reference`` and ``--engine sglang`` take ``engine_srv``.

SGLang's server takes tens of seconds to start on 2 cores, so it is started
once per session and shared with the other SGLang tests (``sglang_helpers``); tests leave it idle and leak-free (SGLang's
own idle check aborts the scheduler on a KV pool leak, so a leaking test makes
every later SGLang test fail). ``--chunked-prefill-size 64`` makes prompts of a
few hundred tokens take several prefill steps, as the reference's token budget
does.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from srt_ext.engines.reference.model_store import TINY_MODEL

ENGINES = ("reference", "sglang")
GREEDY = {"temperature": 0.0}  # SGLang's own default temperature is 1.0


class EngineServer:
    """What the tests need of a server, whichever engine serves it."""

    def __init__(self, engine: str, url: str, handle: Any) -> None:
        self.engine, self.url, self.handle = engine, url, handle

    def client(self, **kw: Any) -> Any:
        from srt_ext.client.rest import Client

        return Client(self.url, **kw)

    def flush(self, timeout: float = 30.0) -> None:
        """Free every unpinned cached prefix (SGLang refuses while a request is
        still in its queues or last batch, so retry until it is idle)."""
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.post(self.url + "/flush_cache", timeout=30.0)
            if r.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"/flush_cache refused: {r.status_code} {r.text}")
            time.sleep(0.2)

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/v1/stats", timeout=30.0).json())

    def wait_pinned(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` tokens of partial input are computed and pinned: the
        partial prefill between chunks has run."""
        deadline = time.monotonic() + timeout
        while self.stats()["kv_pinned_tokens"] < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"partial prefill did not reach {n} tokens: {self.stats()}")
            time.sleep(0.05)

    def wait_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stats once nothing is open or pinned (what a leak test asserts)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if s["streams_open"] == 0 and s["kv_pinned_tokens"] == 0:
                return s
            if time.monotonic() > deadline:
                return s
            time.sleep(0.1)


def _reference() -> Iterator[EngineServer]:
    from srt_ext.launch import launch_server

    with launch_server(model_path=TINY_MODEL, max_total_tokens=4096, token_budget=64, scheduler="fcfs", threads=1) as h:
        yield EngineServer("reference", h.url, h)


def _sglang() -> Iterator[EngineServer]:
    if importlib.util.find_spec("sglang") is None:
        pytest.skip("sglang is not installed")
    from sglang_helpers import shared_sglang_server  # the session's one SGLang server

    s = shared_sglang_server()
    yield EngineServer("sglang", s.url, s)
    assert s.alive(), f"SGLang's server died during the tests:\n{s.log_tail(60)}"


@pytest.fixture(scope="session", params=ENGINES)
def engine_srv(request: pytest.FixtureRequest) -> Iterator[EngineServer]:
    """A running server of each engine (the parameter), shared by the session."""
    yield from (_reference() if request.param == "reference" else _sglang())
