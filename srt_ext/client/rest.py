"""Python client for the stream2llm REST API (sync and async).

Used by the tests, the demo and ``stream2llm replay``. The two classes have the
same methods; every 4xx/5xx becomes ``ServerError(status, reason)`` so callers
branch on a status code, not on parsing bodies.

    with Client("http://127.0.0.1:30000") as c:
        rid = c.open_stream(mode="append", sampling_params={"max_new_tokens": 32})
        c.send_chunk(rid, text="first retrieved passage ...")
        c.send_chunk(rid, text="the question?", final=True)
        print(c.result(rid)["text"])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any, NamedTuple

import httpx
import orjson


class ChunkAck(NamedTuple):
    rid: str
    input_tokens: int
    cached_tokens: int
    invalidated_tokens: int


class ServerError(Exception):
    """The server answered 4xx/5xx; ``reason`` is its JSON ``error`` text."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            reason = r.json().get("error", r.text)
        except ValueError:
            reason = r.text
        raise ServerError(r.status_code, str(reason))
    return orjson.loads(r.content) if r.content else None


FLUSH_WAIT_S = 30.0
FLUSH_RETRY_S = 0.5  # pause between two refused flushes


class FlushRefused(ServerError):
    """``/flush_cache`` was refused because the cache is in use: SGLang's server
    flushes only when no request is queued or running and no stream is parked
    (a parked stream's KV is pinned in the tree); ``reason`` is its answer."""


def _flushed(r: httpx.Response) -> int | None:
    """Tokens a ``/flush_cache`` freed: JSON from our server (``flushed_tokens``),
    plain text from SGLang's (None: it does not say). SGLang's refusal, a 400 with
    a text reason, raises ``FlushRefused``; any other error ``ServerError``."""
    if r.status_code == 400:
        raise FlushRefused(400, r.text.strip() or "flush refused")
    if r.status_code >= 400:
        _check(r)
    try:
        body = orjson.loads(r.content)
    except orjson.JSONDecodeError:
        return None  # SGLang's "Cache flushed." text
    return int(body["flushed_tokens"]) if isinstance(body, dict) and "flushed_tokens" in body else None


def _flush_params(deadline: float) -> dict[str, float]:
    """SGLang's ``timeout``: how long its scheduler may wait for idle (what is left)."""
    return {"timeout": round(max(0.0, deadline - time.monotonic()), 3)}


def _input(text: str | None, input_ids: list[int] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if text is not None:
        body["text"] = text
    if input_ids is not None:
        body["input_ids"] = list(input_ids)
    return body


def _open_body(mode: str, sampling_params: dict[str, Any] | None, text: str | None,
               input_ids: list[int] | None, final: bool, rid: str | None) -> dict[str, Any]:  # fmt: skip
    body = {"mode": mode, "final": final, **_input(text, input_ids)}
    if sampling_params is not None:
        body["sampling_params"] = sampling_params
    if rid is not None:
        body["rid"] = rid
    return body


def _chunk_body(text: str | None, input_ids: list[int] | None, final: bool,
                sampling_params: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    body = {"final": final, **_input(text, input_ids)}
    if sampling_params is not None:
        body["sampling_params"] = sampling_params
    return body


def _ack(d: dict[str, Any]) -> ChunkAck:
    return ChunkAck(d["rid"], d["input_tokens"], d["cached_tokens"], d["invalidated_tokens"])


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """One ``data:`` line -> its JSON (None for ``[DONE]`` and non-data lines)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    obj = orjson.loads(data)
    if isinstance(obj, dict) and "error" in obj and isinstance(obj["error"], dict):
        err = obj["error"]
        raise ServerError(int(err.get("code", 500)), str(err.get("message", "")))
    return obj


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    """Synchronous client (``httpx.Client``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=_headers(api_key), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_stream(self, mode: str = "append", sampling_params: dict[str, Any] | None = None,
                    text: str | None = None, input_ids: list[int] | None = None,
                    final: bool = False, rid: str | None = None) -> str:  # fmt: skip
        body = _open_body(mode, sampling_params, text, input_ids, final, rid)
        return _check(self.http.post("/v1/streams", json=body))["rid"]

    def send_chunk(self, rid: str, text: str | None = None, input_ids: list[int] | None = None,
                   final: bool = False, sampling_params: dict[str, Any] | None = None) -> ChunkAck:  # fmt: skip
        body = _chunk_body(text, input_ids, final, sampling_params)
        return _ack(_check(self.http.post(f"/v1/streams/{rid}/chunks", json=body)))

    def result(self, rid: str) -> dict[str, Any]:
        return _check(self.http.get(f"/v1/streams/{rid}/result"))

    def _sse(self, method: str, path: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """Server-sent events of one request, parsed; errors raise ``ServerError``."""
        with self.http.stream(method, path, **kw) as r:
            if r.status_code >= 400:
                r.read()
                _check(r)
            for line in r.iter_lines():
                obj = parse_sse_line(line)
                if obj is not None:
                    yield obj

    def stream_result(self, rid: str) -> Iterator[dict[str, Any]]:
        return self._sse("GET", f"/v1/streams/{rid}/result", params={"stream": "true"})

    def abort(self, rid: str) -> None:
        _check(self.http.delete(f"/v1/streams/{rid}"))

    def generate(self, text: str | None = None, input_ids: list[int] | None = None,
                 sampling_params: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        body = {**_input(text, input_ids), "sampling_params": sampling_params or {}}
        return _check(self.http.post("/generate", json=body))

    def generate_stream(self, text: str | None = None, input_ids: list[int] | None = None,
                        sampling_params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
        body = {**_input(text, input_ids), "sampling_params": sampling_params or {}, "stream": True}
        return self._sse("POST", "/generate", json=body)

    def stats(self) -> dict[str, Any]:
        return _check(self.http.get("/v1/stats"))

    def flush_cache(self, wait_s: float = FLUSH_WAIT_S) -> int | None:
        """Drop cached prefixes no live request holds; returns the tokens freed
        where the server says (SGLang's answers in plain text: None). SGLang
        refuses while the cache is in use: this asks again for up to ``wait_s``,
        then raises ``FlushRefused`` with SGLang's reason."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return _flushed(self.http.post("/flush_cache", params=_flush_params(deadline)))
            except FlushRefused:
                if time.monotonic() + FLUSH_RETRY_S > deadline:
                    raise
            time.sleep(FLUSH_RETRY_S)

    def health(self) -> bool:
        try:
            return self.http.get("/health", timeout=30.0).status_code == 200
        except httpx.HTTPError:
            return False


class AsyncClient:
    """Asynchronous client (``httpx.AsyncClient``), same methods as ``Client``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0,
                 max_connections: int = 1000) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=100)
        self.http = httpx.AsyncClient(base_url=self.url, headers=_headers(api_key),
                                      timeout=timeout, limits=limits)  # fmt: skip

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open_stream(self, mode: str = "append", sampling_params: dict[str, Any] | None = None,
                          text: str | None = None, input_ids: list[int] | None = None,
                          final: bool = False, rid: str | None = None) -> str:  # fmt: skip
        body = _open_body(mode, sampling_params, text, input_ids, final, rid)
        return _check(await self.http.post("/v1/streams", json=body))["rid"]

    async def send_chunk(self, rid: str, text: str | None = None,
                         input_ids: list[int] | None = None, final: bool = False,
                         sampling_params: dict[str, Any] | None = None) -> ChunkAck:  # fmt: skip
        body = _chunk_body(text, input_ids, final, sampling_params)
        return _ack(_check(await self.http.post(f"/v1/streams/{rid}/chunks", json=body)))

    async def result(self, rid: str) -> dict[str, Any]:
        return _check(await self.http.get(f"/v1/streams/{rid}/result"))

    async def stream_result(self, rid: str) -> AsyncGenerator[dict[str, Any], None]:
        async with self.http.stream("GET", f"/v1/streams/{rid}/result",
                                    params={"stream": "true"}) as r:  # fmt: skip
            if r.status_code >= 400:
                await r.aread()
                _check(r)
            async for line in r.aiter_lines():
                obj = parse_sse_line(line)
                if obj is not None:
                    yield obj

    async def abort(self, rid: str) -> None:
        _check(await self.http.delete(f"/v1/streams/{rid}"))

    async def generate(self, text: str | None = None, input_ids: list[int] | None = None,
                       sampling_params: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        body = {**_input(text, input_ids), "sampling_params": sampling_params or {}}
        return _check(await self.http.post("/generate", json=body))

    async def stats(self) -> dict[str, Any]:
        return _check(await self.http.get("/v1/stats"))

    async def flush_cache(self, wait_s: float = FLUSH_WAIT_S) -> int | None:
        """``Client.flush_cache``: asks again for up to ``wait_s``, then ``FlushRefused``."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                r = await self.http.post("/flush_cache", params=_flush_params(deadline))
                return _flushed(r)
            except FlushRefused:
                if time.monotonic() + FLUSH_RETRY_S > deadline:
                    raise
            await asyncio.sleep(FLUSH_RETRY_S)

    async def health(self) -> bool:
        try:
            return (await self.http.get("/health", timeout=30.0)).status_code == 200
        except httpx.HTTPError:
            return False
