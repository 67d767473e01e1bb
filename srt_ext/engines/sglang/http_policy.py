"""``serve``'s API-room options on SGLang's HTTP process: keys, limits, readers.

``stream2llm serve --engine sglang`` starts SGLang's server as a child
(``launch.py``); the options the reference server enforces in its API room
reach that child as environment variables (``launch.server_env``) and are
enforced here, in the process that runs SGLang's FastAPI app, when our
frontend is installed (``frontend.install``):

- ``--api-key-file`` (several keys, ``NAME KEY`` lines; ``--api-key`` joins them as
  a nameless key): ``KeyAuth`` refuses every request without one of them, on
  SGLang's own routes as on ours, with 401 and a JSON reason. Exempt are what
  SGLang's own ``--api-key`` middleware exempts (``OPTIONS``, ``/health*``,
  ``/ready*``, ``/metrics*``), so probes and scrapers need no secret. The key's
  name is the client the per-client limits count against (``limits.client_key``).
- ``--max-body-bytes``: ``limits.BodyLimit`` (413) in front of the whole app.
- ``--max-input-tokens``: 400 for any request whose input is longer, checked in
  the ``TokenizerManager``'s own length validation (``/generate``, the OpenAI
  routes, a stream's first input) and by the frontend for later chunks.
- ``--max-streams-per-client``: 429 when one client opens one stream too many.
- ``--reader-disconnect``: whether a result reader leaving aborts its stream.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from srt_ext.api.limits import BodyLimit, Limits, load_api_keys
from srt_ext.api.req_state import WorkerError

API_KEY_FILE_ENV = "STREAM2LLM_API_KEY_FILE"
API_KEY_ENV = "STREAM2LLM_API_KEY"  # the shared --api-key, when --api-key-file is given too
MAX_INPUT_ENV = "STREAM2LLM_MAX_INPUT_TOKENS"
MAX_STREAMS_ENV = "STREAM2LLM_MAX_STREAMS_PER_CLIENT"
MAX_BODY_ENV = "STREAM2LLM_MAX_BODY_BYTES"
READER_ENV = "STREAM2LLM_READER_DISCONNECT"  # keep | abort
IDLE_ENV = "STREAM2LLM_STREAM_IDLE_TIMEOUT"  # seconds; 0 disables (frontend's reaper)
# what SGLang's own api-key middleware lets through (sglang.srt.utils.auth)
EXEMPT_PREFIXES = ("/health", "/ready", "/metrics")
UNAUTHORIZED = "missing or wrong API key (Authorization: Bearer KEY)"


def _int_env(name: str) -> int | None:
    """A positive int from the environment; unset, empty or 0 means no limit."""
    value = int(os.environ.get(name, "0") or 0)
    return value if value > 0 else None


@dataclass
class HttpPolicy:
    """The API-room options of this server, as ``launch.server_env`` passed them."""

    keys: dict[str, str] = field(default_factory=dict)  # key -> client name ("" = per IP)
    max_body_bytes: int | None = None
    limits: Limits = field(default_factory=Limits)
    reader_disconnect: str = "keep"

    @classmethod
    def from_env(cls) -> HttpPolicy:
        path = os.environ.get(API_KEY_FILE_ENV)
        keys = load_api_keys(path) if path else {}
        shared = os.environ.get(API_KEY_ENV)
        if keys and shared:
            keys.setdefault(shared, "")  # one shared key: its clients stay per IP
        return cls(keys=keys, max_body_bytes=_int_env(MAX_BODY_ENV),
                   limits=Limits(_int_env(MAX_INPUT_ENV), _int_env(MAX_STREAMS_ENV)),
                   reader_disconnect=os.environ.get(READER_ENV, "keep") or "keep")  # fmt: skip


class KeyAuth:
    """Pure ASGI middleware: a request needs ``Authorization: Bearer KEY`` with one
    of ``keys`` (compared with every key in constant time, so timing tells nothing);
    the key's name lands in ``request.state.api_key_name``. A WebSocket without a
    key is closed (1008, policy violation) before it is accepted."""

    def __init__(self, app: Any, keys: dict[str, str]) -> None:
        self.app = app
        self.bearer = [(f"Bearer {k}".encode(), name) for k, name in keys.items()]

    def _name(self, scope: dict[str, Any]) -> str | None:
        got = dict(scope.get("headers", ())).get(b"authorization", b"")
        hits = [name for b, name in self.bearer if hmac.compare_digest(got, b)]
        return hits[0] if hits else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or _exempt(scope):
            await self.app(scope, receive, send)
            return
        name = self._name(scope)
        if name is None:
            await (_refuse_http(send) if kind == "http" else _refuse_ws(receive, send))
            return
        scope.setdefault("state", {})["api_key_name"] = name or None
        await self.app(scope, receive, send)


def _exempt(scope: dict[str, Any]) -> bool:
    return scope.get("method") == "OPTIONS" or str(scope.get("path", "")).startswith(EXEMPT_PREFIXES)


async def _refuse_http(send: Any) -> None:
    body = orjson.dumps({"error": UNAUTHORIZED})
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def _refuse_ws(receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 1008, "reason": UNAUTHORIZED})


def limit_tokenizer_input(tm: Any, limits: Limits) -> None:
    """Wrap this ``TokenizerManager``'s own input validation (``_validate_one_request``,
    which every request's tokenization runs) with ``--max-input-tokens``: SGLang
    answers its ValueError with 400 on ``/generate`` and the OpenAI routes, and the
    stream routes do the same for a stream's first input."""
    if limits.max_input_tokens is None or getattr(tm, "_stream2llm_input_limit", False):
        return
    validate = tm._validate_one_request

    def validate_one_request(obj: Any, input_ids: Any) -> Any:
        check_input(limits, len(input_ids or ()), ValueError)
        return validate(obj, input_ids)

    tm._validate_one_request = validate_one_request
    tm._stream2llm_input_limit = True


def check_input(limits: Limits, n_tokens: int, error: Callable[[str], Exception]) -> None:
    """``Limits.check_input``, raising ``error(reason)`` (the caller's error type)."""
    try:
        limits.check_input(n_tokens)
    except WorkerError as exc:
        raise error(exc.reason) from None


def install_policy(app: Any, tm: Any, policy: HttpPolicy) -> None:
    """Add the middlewares to SGLang's app (before it starts serving) and the input
    limit to its tokenizer manager."""
    if getattr(app.state, "stream2llm_policy", None) is None:
        app.state.stream2llm_policy = policy
        if policy.max_body_bytes:
            app.add_middleware(BodyLimit, max_bytes=policy.max_body_bytes)
        if policy.keys:
            app.add_middleware(KeyAuth, keys=policy.keys)  # outermost: before the body is read
    limit_tokenizer_input(tm, policy.limits)
