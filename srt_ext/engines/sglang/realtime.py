"""``/v1/realtime``: OpenAI's Realtime API (text) on SGLang's FastAPI app.

Why a WebSocket next to the REST stream routes: a Realtime client (the
``openai`` SDK's ``client.realtime.connect``, or any client speaking the
protocol) already streams context item by item and asks for the answer with
``response.create``, which is exactly a stream's chunks and its final chunk. Each
connection is one ``RealtimeSession`` over the same ``StreamFrontend`` the REST
routes use (docs/api.md, "Realtime").

Auth: SGLang's ``--api-key`` middleware only sees HTTP requests (it passes
WebSocket scopes through), so the key is checked here, from the
``Authorization: Bearer`` header (what the SDK sends) or the
``openai-insecure-api-key.<key>`` subprotocol (what browser clients send). A
session's stream counts against its client's ``--max-streams-per-client``.

SGLang 0.5.23 has a ``/v1/realtime`` of its own (transcription sessions, ASR
models only); ours replaces that route on the app: on a text model SGLang's
refuses every session.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.routing import WebSocketRoute

from srt_ext.api.limits import client_key
from srt_ext.engines.sglang.realtime_events import RealtimeError, Settings, error_event, event
from srt_ext.engines.sglang.realtime_prompt import make_render, model_template
from srt_ext.engines.sglang.realtime_session import RealtimeSession

_MARK = "stream2llm_realtime"
PATH = "/v1/realtime"
KEY_PROTOCOL = "openai-insecure-api-key."
logger = logging.getLogger(__name__)


def api_keys(tm: Any) -> list[str]:
    """The keys a client may present: SGLang's ``--api-key`` and, when the HTTP
    policy is installed, the ``--api-key-file`` keys (``http_policy.KeyAuth`` has
    then already checked the header of a WebSocket; this adds the subprotocol)."""
    key = getattr(getattr(tm, "server_args", None), "api_key", None)
    policy = getattr(getattr(tm, "stream2llm_frontend", None), "policy", None)
    return [*([key] if key else []), *getattr(policy, "keys", {})]


def presented_key(ws: WebSocket) -> str | None:
    auth = ws.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for proto in ws.scope.get("subprotocols") or []:
        if proto.startswith(KEY_PROTOCOL):
            return proto[len(KEY_PROTOCOL):]
    return None


def admit(ws: WebSocket, tm: Any) -> str | None:
    """Why this connection is refused, or None."""
    keys = api_keys(tm)
    if not keys:
        return None
    got = presented_key(ws) or ""
    if not any(hmac.compare_digest(got.encode(), k.encode()) for k in keys):
        return "invalid or missing API key"
    return None


def _session(ws: WebSocket, fe: Any) -> RealtimeSession:
    tm, tok = fe.tm, fe.tok
    path = getattr(tm.server_args, "tokenizer_path", None) or tm.server_args.model_path
    render = make_render(model_template(path, tok.chat_template), getattr(tm, "tokenizer", None))

    async def send(ev: dict[str, Any]) -> None:
        await ws.send_text(orjson.dumps(ev).decode())

    model = getattr(tm, "served_model_name", None) or str(tm.server_args.model_path)
    return RealtimeSession(fe, send, render, lambda text, first: tok.encode(text, first=first),
                           int(tm.context_len), Settings(model=model))  # fmt: skip


async def serve_connection(ws: WebSocket) -> None:
    """One client: accept, ``session.created``, then its events in order until it leaves."""
    from srt_ext.engines.sglang.routes import _frontend

    try:
        fe = _frontend()
    except Exception:  # noqa: BLE001  (the server is still starting)
        await ws.close(code=1013, reason="server starting")
        return
    reason = admit(ws, fe.tm)
    if reason is not None:
        await ws.close(code=1008, reason=reason)  # before accept: the handshake gets HTTP 403
        return
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    session = _session(ws, fe)
    session.client = client_key(ws)
    try:
        await session.send(event("session.created", session=session.settings.json(session.id)))
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            raw = msg.get("text") if msg.get("text") is not None else msg.get("bytes")
            try:
                ev = orjson.loads(raw or b"")
            except orjson.JSONDecodeError as exc:
                await session.send(error_event(RealtimeError("invalid_json", f"event is not JSON: {exc}"), None))
                continue
            await session.handle(ev)
    except WebSocketDisconnect:
        pass
    except Exception:  # noqa: BLE001  (one connection's failure never takes the server down)
        logger.exception("realtime connection failed")
    finally:
        await session.close()


def add_realtime_route(app: FastAPI) -> None:
    """Add ``/v1/realtime`` to ``app`` once."""
    if getattr(app.state, _MARK, False):
        return
    setattr(app.state, _MARK, True)
    # SGLang 0.5.23 has its own /v1/realtime: transcription sessions for ASR models
    # only (a chat session.update is refused there). Ours serves chat on this text
    # model, so it takes the path over rather than sitting unreachable behind it.
    app.router.routes[:] = [r for r in app.router.routes
                            if not (isinstance(r, WebSocketRoute) and r.path == PATH)]  # fmt: skip
    app.add_api_websocket_route(PATH, serve_connection)
