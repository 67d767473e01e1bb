"""Typed messages between the API server (tokenizer room) and the worker
(scheduler + engine room), framed with msgpack by msgspec.

Why msgspec and not pickle: the two rooms may run different code versions (or,
with disaggregation, different machines); a schema-checked, tagged union fails
loudly on anything unexpected instead of executing it. Every message is a
``msgspec.Struct`` with a ``type`` tag, so one decoder turns bytes into exactly
one of the classes below, and ``decode_*`` re-validates the fields that the type
system cannot express (non-negative token ids, sane sampling values).

Direction server -> worker: ``OpenStream``, ``AddChunk``, ``Abort``, ``Generate``,
``StatsRequest``, ``Ping``, ``Shutdown``. Every request carries ``req_id`` and
gets exactly one reply (``ChunkReply``, ``StatsReply``, ``Pong`` or ``ErrorReply``)
so the HTTP handler learns the outcome (cached/invalidated counts, 404/409/400).

Direction worker -> server: replies, and per-step ``EventBatch`` messages holding
``TokenEvent`` / ``FinishedEvent`` / ``StreamError`` items, each with the worker's
wall-clock timestamp.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import msgspec

TokenId = Annotated[int, msgspec.Meta(ge=0)]


class SamplingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the engine needs to sample; stop strings are handled by the API room."""

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] = []


# ---- server -> worker ------------------------------------------------------------
class OpenStream(msgspec.Struct, tag="open", forbid_unknown_fields=True):
    req_id: int
    rid: str
    mode: Literal["append", "update"]
    sampling: SamplingSpec
    input_ids: list[TokenId] | None = None  # first chunk (optional)
    final: bool = False
    t: float = 0.0


class AddChunk(msgspec.Struct, tag="chunk", forbid_unknown_fields=True):
    req_id: int
    rid: str
    input_ids: list[TokenId]
    final: bool = False
    t: float = 0.0
    sampling: SamplingSpec | None = None  # final chunk only: replaces the open's params


class FlushCache(msgspec.Struct, tag="flush", forbid_unknown_fields=True):
    """Drop every unlocked cached prefix (SGLang's /flush_cache)."""

    req_id: int


class Abort(msgspec.Struct, tag="abort", forbid_unknown_fields=True):
    req_id: int
    rid: str


class Generate(msgspec.Struct, tag="generate", forbid_unknown_fields=True):
    """One-shot request: open + one final chunk in a single message."""

    req_id: int
    rid: str
    input_ids: list[TokenId]
    sampling: SamplingSpec
    t: float = 0.0


class StatsRequest(msgspec.Struct, tag="stats", forbid_unknown_fields=True):
    req_id: int


class Ping(msgspec.Struct, tag="ping", forbid_unknown_fields=True):
    req_id: int


class Shutdown(msgspec.Struct, tag="shutdown", forbid_unknown_fields=True):
    req_id: int = 0


ToWorker = Union[OpenStream, AddChunk, Abort, Generate, StatsRequest, FlushCache, Ping, Shutdown]  # noqa: UP007


# ---- worker -> server ------------------------------------------------------------
class ChunkReply(msgspec.Struct, tag="chunk_reply"):
    """The scheduler's ChunkResult for an open/chunk/generate request."""

    req_id: int
    rid: str
    input_tokens: int  # length of the stream's input after the chunk
    cached_tokens: int  # computed tokens still valid (KV kept)
    invalidated_tokens: int  # computed tokens this chunk made stale (update mode)
    deferred: bool = False


class ErrorReply(msgspec.Struct, tag="error_reply"):
    req_id: int
    rid: str | None
    status: int  # the HTTP status the API room should answer with
    reason: str


class StatsReply(msgspec.Struct, tag="stats_reply"):
    req_id: int
    stats: dict[str, int | float | dict[str, int]]


class Pong(msgspec.Struct, tag="pong"):
    req_id: int
    t: float


class TokenEvent(msgspec.Struct, tag="token"):
    rid: str
    token: int
    t: float  # worker wall clock when the step that sampled it was committed
    first: bool = False


FinishReason = Literal["stop", "length", "abort"]


class FinishedEvent(msgspec.Struct, tag="finished"):
    rid: str
    t: float
    reason: FinishReason
    matched: int | None = None  # the stop token, for reason == "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens already computed when the input became final
    final_t: float | None = None  # worker time the final chunk was applied
    first_token_t: float | None = None
    preemptions: int = 0
    tokens_invalidated: int = 0


class StreamError(msgspec.Struct, tag="stream_error"):
    """A request that failed inside the worker (engine error): it is gone."""

    rid: str
    status: int
    reason: str
    t: float = 0.0


Event = Union[TokenEvent, FinishedEvent, StreamError]  # noqa: UP007


class EventBatch(msgspec.Struct, tag="events"):
    events: list[Event]


FromWorker = Union[ChunkReply, ErrorReply, StatsReply, Pong, EventBatch]  # noqa: UP007

_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_from_worker = msgspec.msgpack.Decoder(FromWorker)


class MessageError(ValueError):
    """Bytes that are not a valid message (wrong schema or bad values)."""


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def _check_sampling(sp: SamplingSpec) -> None:
    if sp.max_new_tokens < 1:
        raise MessageError("max_new_tokens must be >= 1")
    if not (math.isfinite(sp.temperature) and sp.temperature >= 0.0):
        raise MessageError("temperature must be finite and >= 0")
    if not (0.0 < sp.top_p <= 1.0):
        raise MessageError("top_p must be in (0, 1]")
    if sp.top_k < 0:
        raise MessageError("top_k must be >= 0 (0 = off)")


def decode_to_worker(data: bytes) -> ToWorker:
    """Decode and validate a request to the worker; raises ``MessageError``."""
    try:
        msg = _to_worker.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise MessageError(str(exc)) from exc
    sp = getattr(msg, "sampling", None)
    if sp is not None:
        _check_sampling(sp)
    if isinstance(msg, (OpenStream, AddChunk, Abort, Generate)) and not msg.rid:
        raise MessageError("empty rid")
    return msg


def decode_from_worker(data: bytes) -> FromWorker:
    """Decode a worker message; raises ``MessageError``."""
    try:
        return _from_worker.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(str(exc)) from exc
