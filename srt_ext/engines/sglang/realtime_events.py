"""OpenAI Realtime (GA) event shapes for a text-only server.

The server events are plain dicts in the shapes the ``openai`` SDK parses
(``openai.types.realtime``: ``session.created``, ``conversation.item.added`` /
``.done``, ``response.output_text.delta``, ``response.done`` with ``usage``,
``error``...); client items are checked here so that anything this server
cannot serve (audio, images, tools) is refused with the protocol's ``error``
event before it touches the conversation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from srt_ext.engines.sglang.realtime_prompt import Item

ROLES = ("system", "user", "assistant")
TEXT_PARTS = {"system": ("input_text", "text"), "user": ("input_text", "text"),
              "assistant": ("output_text", "text")}  # fmt: skip


class RealtimeError(Exception):
    """A refused client event: answered with an ``error`` event, nothing changed."""

    def __init__(self, code: str, message: str, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.code, self.message, self.param, self.type = code, message, param, type_


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def error_event(exc: RealtimeError, event_id: str | None) -> dict[str, Any]:
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                      "param": exc.param, "event_id": event_id}}  # fmt: skip


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": new_id("event"), **fields}


def item_json(it: Item) -> dict[str, Any]:
    part = "output_text" if it.role == "assistant" else "input_text"
    return {"id": it.id, "object": "realtime.item", "type": "message", "role": it.role,
            "status": it.status, "content": [{"type": part, "text": it.text}]}  # fmt: skip


def parse_item(raw: Any) -> Item:
    """A client ``message`` item with text content, or a RealtimeError."""
    if not isinstance(raw, dict):
        raise RealtimeError("invalid_value", "item must be an object", "item")
    if raw.get("type", "message") != "message":
        raise RealtimeError("unsupported_item_type",
                            f"item type {raw.get('type')!r} is not supported (text messages only)",
                            "item.type")  # fmt: skip
    role = raw.get("role")
    if role not in ROLES:
        raise RealtimeError("invalid_value", f"item role must be one of {ROLES}", "item.role")
    content = raw.get("content")
    if not isinstance(content, list):
        raise RealtimeError("invalid_value", "item content must be a list of parts", "item.content")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_audio", "output_audio", "audio"):
            raise RealtimeError("unsupported_modality", "audio content is not supported: this "
                                "server is text-only", f"item.content[{i}]")  # fmt: skip
        if kind not in TEXT_PARTS[role] or not isinstance(part.get("text"), str):
            raise RealtimeError("invalid_value", f"{role} content parts must be "
                                f"{TEXT_PARTS[role][0]} with text", f"item.content[{i}]")  # fmt: skip
        texts.append(part["text"])
    item_id = raw.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not item_id):
        raise RealtimeError("invalid_value", "item id must be a non-empty string", "item.id")
    return Item(id=item_id or new_id("item"), role=role, text="".join(texts))


def check_modalities(value: Any, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or any(m not in ("text", "audio") for m in value):
        raise RealtimeError("invalid_value", "output_modalities must be a list of 'text'/'audio'", param)
    if value != ["text"]:
        raise RealtimeError("unsupported_modality", "only output_modalities ['text'] is supported: "
                            "this server is text-only", param)  # fmt: skip


def check_max_tokens(value: Any, param: str) -> None:
    if value is None or value == "inf":
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise RealtimeError("invalid_value", "max_output_tokens must be an integer in [1, 4096] "
                            "or 'inf'", param)  # fmt: skip


@dataclass
class Settings:
    """What ``session.update`` sets: instructions (a system message at the head)
    and sampling. ``temperature`` is not in the GA session object; it is read
    when a client sends it (the beta API had it) and defaults to 0 (greedy,
    exact against a one-shot request)."""

    model: str
    instructions: str = ""
    max_output_tokens: int | str = "inf"
    temperature: float = 0.0

    def update(self, raw: Any) -> Settings:
        if not isinstance(raw, dict):
            raise RealtimeError("invalid_value", "session must be an object", "session")
        if raw.get("type", "realtime") != "realtime":
            raise RealtimeError("unsupported_session_type", "only session type 'realtime' is "
                                "supported", "session.type")  # fmt: skip
        check_modalities(raw.get("output_modalities"), "session.output_modalities")
        check_max_tokens(raw.get("max_output_tokens"), "session.max_output_tokens")
        ins, temp = raw.get("instructions"), raw.get("temperature")
        if ins is not None and not isinstance(ins, str):
            raise RealtimeError("invalid_value", "instructions must be a string", "session.instructions")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, int | float) or temp < 0):
            raise RealtimeError("invalid_value", "temperature must be a number >= 0", "session.temperature")
        return Settings(self.model, self.instructions if ins is None else ins,
                        raw.get("max_output_tokens") or self.max_output_tokens,
                        self.temperature if temp is None else float(temp))  # fmt: skip

    def json(self, session_id: str) -> dict[str, Any]:
        return {"type": "realtime", "object": "realtime.session", "id": session_id,
                "model": self.model, "output_modalities": ["text"],
                "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "temperature": self.temperature, "tools": [], "tool_choice": "auto"}  # fmt: skip


def usage(meta: dict[str, Any], prefilled: int) -> dict[str, Any]:
    """``response.done``'s usage from SGLang's meta_info. ``cached_tokens``: input
    whose KV this response did not compute after response.create, the larger of
    ``prefilled`` (computed while items arrived: the final chunk's ack) and
    SGLang's ``cached_tokens`` (found in the radix tree at admission, e.g. the
    previous turn, when the stream had not been admitted before the final chunk)."""
    inp, out = int(meta.get("prompt_tokens") or 0), int(meta.get("completion_tokens") or 0)
    cached = max(prefilled, int(meta.get("cached_tokens") or 0))
    return {"total_tokens": inp + out, "input_tokens": inp, "output_tokens": out,
            "input_token_details": {"text_tokens": inp, "audio_tokens": 0, "image_tokens": 0,
                                    "cached_tokens": cached,
                                    "cached_tokens_details": {"text_tokens": cached}},
            "output_token_details": {"text_tokens": out, "audio_tokens": 0}}  # fmt: skip
