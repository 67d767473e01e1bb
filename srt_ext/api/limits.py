"""Per-request and per-client limits of the API room.

Why here and not in the worker: the worker only knows the KV pool and the
model's context; what one client may ask of a shared server (input length,
open streams, request size) is policy of the front end, and refusing early
means a refused request never reaches the worker, so it changes nothing there.

- ``max_input_tokens``: a request's input (a stream's whole input after a chunk)
  over it is 400.
- ``max_streams_per_client``: live streams opened by one client over it is
  429. The client is its API key's name when the server has several keys
  (``--api-key-file``): behind a router or a gateway every request comes from
  the same address, so only the key tells clients apart. With one shared
  ``--api-key`` (or none) it is the client's IP address: a per-key cap would
  then be a global cap.
- ``BodyLimit``: request bodies over ``max_body_bytes`` are 413, checked on
  ``Content-Length`` and on the bytes actually received (chunked uploads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from srt_ext.api.req_state import ReqState, WorkerError


@dataclass
class Limits:
    max_input_tokens: int | None = None
    max_streams_per_client: int | None = None

    def check_input(self, n_tokens: int) -> None:
        if self.max_input_tokens is not None and n_tokens > self.max_input_tokens:
            raise WorkerError(400, f"input of {n_tokens} tokens exceeds the per-request limit "
                                   f"of {self.max_input_tokens} (--max-input-tokens)")  # fmt: skip

    def check_streams(self, states: Iterable[ReqState], client: str) -> None:
        cap = self.max_streams_per_client
        if cap is None:
            return
        live = sum(1 for s in states if s.client == client and s.mode != "oneshot" and not s.done)
        if live >= cap:
            raise WorkerError(429, f"client {client} already has {live} open streams "
                                   f"(--max-streams-per-client {cap})")  # fmt: skip


def client_id(scope_client: Any) -> str:
    """A client's IP address (``request.client``)."""
    return str(scope_client[0]) if scope_client else "unknown"


def client_key(request: Any) -> str:
    """The client a request counts against (see the module docstring)."""
    name = getattr(request.state, "api_key_name", None)
    return f"key:{name}" if name else client_id(request.client)


def load_api_keys(path: str) -> dict[str, str]:
    """``--api-key-file``: one ``NAME KEY`` per line (``#`` comments) -> {key: name}."""
    keys: dict[str, str] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'NAME KEY', got {len(parts)} fields")
            name, key = parts
            if key in keys:
                raise ValueError(f"{path}:{n}: key of {name} repeats the key of {keys[key]}")
            keys[key] = name
    if not keys:
        raise ValueError(f"{path}: no keys")
    return keys


class BodyLimit:
    """Pure ASGI middleware: 413 for a request body over ``max_bytes``.

    The body is read up front (bounded by the limit) and replayed to the app, so
    an oversize upload is refused before anything parses it, whether or not it
    declared its length.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
                    return
        messages: list[dict[str, Any]] = []
        size = 0
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":
                break
            size += len(msg.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not msg.get("more_body", False):
                break

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = orjson.dumps({"error": f"request body over {self.max_bytes} bytes (--max-body-bytes)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
