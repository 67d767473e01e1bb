"""What the API room knows about each request, and how long it keeps finished ones.

``ReqState`` is one request (a stream or a one-shot) as the API room sees it: the
tokens so far, its finish, who reads it; readers wait on its change notification.
``RequestTable`` holds the live states by rid and keeps finished ones for later
``GET /result`` reads, dropping the oldest first once ``KEEP_FINISHED`` are kept, so a
server that runs for days does not grow without bound. Neither knows about sockets:
``WorkerLink`` (the transport) folds the worker's events into them.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from srt_ext import messages as m

KEEP_FINISHED = 10_000  # finished results kept for GET /result (oldest dropped first)


class WorkerError(Exception):
    """A request the worker refused or could not serve (carries the HTTP status)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class ReqState:
    """Everything the API room knows about one request (a stream or a one-shot)."""

    rid: str
    mode: str
    created: float  # server monotonic clock
    stop: list[str] = field(default_factory=list)
    final: bool = False
    final_t: float | None = None
    input_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    first_token_t: float | None = None
    # wall-clock (time.time) stamps of the final input's way through this room:
    # "api_final_at" (handler entered, body parsed), "api_sent_at" (tokenized, sent
    # to the worker), "api_first_token_at"; with the worker's and the client's
    # stamps they split a TTFT into its legs (stream2llm validate); and
    # "api_final_tokens", the final request's own token count (see mark_final)
    stamps: dict[str, float] = field(default_factory=dict)
    done_t: float | None = None
    finish: m.FinishedEvent | None = None
    finish_reason: dict[str, Any] | None = None
    error: WorkerError | None = None
    text_override: str | None = None  # output truncated at a matched stop string
    client: str = ""  # who opened it (per-client stream limit)
    last_active: float = 0.0  # monotonic time of the last chunk or reader (idle reaping)
    readers: int = 0  # handlers waiting on the result right now (never reaped while > 0)
    version: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # chunks of one stream are applied one at a time, in arrival order (asyncio.Lock is FIFO)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.last_active = self.last_active or self.created

    def mark_final(self, t: float, entered: float, tokens: int) -> None:
        """The request's input is complete as of ``t`` (monotonic): its final part
        of ``tokens`` tokens entered this room at ``entered`` (wall clock) and leaves
        for the worker now."""
        self.final, self.final_t = True, t
        self.stamps.update(api_final_at=entered, api_sent_at=time.time(),
                           api_final_tokens=tokens)  # fmt: skip

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def notify(self) -> None:
        self.version += 1
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def wait_change(self, seen: int, timeout: float | None = None) -> None:
        if self.version == seen:
            await asyncio.wait_for(self._changed.wait(), timeout)


class RequestTable:
    """Live requests by rid, plus finished ones kept (bounded) for later reads."""

    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self.states: dict[str, ReqState] = {}
        self.keep_finished = keep_finished
        self._finished: OrderedDict[str, None] = OrderedDict()

    def add(self, st: ReqState) -> None:
        self.states[st.rid] = st

    def drop(self, rid: str) -> None:
        self.states.pop(rid, None)
        self._finished.pop(rid, None)

    def finished(self, rid: str) -> None:
        """``rid`` is done: keep it for readers, forgetting the oldest beyond the bound."""
        self._finished[rid] = None
        while len(self._finished) > self.keep_finished:
            old, _ = self._finished.popitem(last=False)
            self.states.pop(old, None)
