"""Per-stream state the scheduler-side hooks share.

SGLang runs one scheduler per process (one per TP rank), and the hooks we get
(a replaced staticmethod for retraction, an adder class built by the
scheduler) carry no reference to us, so the state is one process-wide table.
It also adapts SGLang ``Req`` objects to our ``scheduler.stream.Stream`` so the
policies in ``scheduler.policies`` rank SGLang requests unchanged.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from scheduler.cost_model import CostModel
from scheduler.planning import Planner
from scheduler.policies import Key, Policy
from scheduler.registry import get_policy
from scheduler.stream import Mode, Stream

POLICY_ENV = "STREAM2LLM_POLICY"
PREEMPTION_ENV = "STREAM2LLM_PREEMPTION"  # cost | recompute | swap
ONESHOT_ATTR = "_stream2llm_oneshot"  # pseudo-stream of a one-shot Req, kept on the Req
COST_MODEL_ENV = "STREAM2LLM_COST_MODEL"


@dataclass(eq=False)
class StreamInfo:
    """What SGLang's ``Req`` does not know about a streamed request."""

    rid: str
    mode: Mode
    seq: int
    opened_s: float
    final: bool = False
    chunks: int = 0
    first_chunk_s: float | None = None
    last_chunk_s: float | None = None
    final_s: float | None = None  # when the input became final: ``ours`` ages from it
    is_stream: bool = True  # False: a plain one-shot request, seen by the adder
    req: Any = None  # sglang Req, once the scheduler created it
    pin: Any = None  # TreeNode we hold one lock on while the stream is parked
    parked: bool = False  # all received input computed, waiting for a chunk
    pending_input: Any = None  # update that arrived while the req was in a forward
    tokens_invalidated: int = 0
    # swapped out while parked: SGLang's host copy of the pinned path's KV
    # (``get_cpu_copy``) and the path's tokens; restored before admission
    host_kv: Any = None
    host_tokens: Any = None
    aborted: bool = False  # while in a forward: released once its step settles

    def note_chunk(self, now: float, final: bool) -> None:
        if self.first_chunk_s is None:
            self.first_chunk_s = now
        self.last_chunk_s = now
        self.chunks += 1
        if final and not self.final:
            self.final, self.final_s = True, now


def _cost_model_from_env() -> CostModel | None:
    """``STREAM2LLM_COST_MODEL`` names a shipped profile or a JSON file; unset
    means retraction always recomputes (SGLang's own behaviour)."""
    name = os.environ.get(COST_MODEL_ENV)
    return CostModel.load(name) if name else None


@dataclass
class StreamTable:
    """All live streams of this scheduler process, plus policy and cost model."""

    policy: Policy = field(default_factory=lambda: get_policy(os.environ.get(POLICY_ENV, "ours")))
    cost_model: CostModel | None = field(default_factory=lambda: _cost_model_from_env())
    clock: Any = time.monotonic
    streams: dict[str, StreamInfo] = field(default_factory=dict)
    parked: dict[str, Any] = field(default_factory=dict)  # rid -> Req out of SGLang's queues
    # rid -> Req admitted with partial input: in a forward, unsampled, not yet parked
    unsampled: dict[str, Any] = field(default_factory=dict)
    holds_off: bool = False  # this step nothing else can run: holds are lifted
    scheduler: Any = None
    # preemptions executed, by how (not merely decided)
    decisions: dict[str, int] = field(default_factory=lambda: {"recompute": 0, "swap": 0})
    preemption: str = field(default_factory=lambda: os.environ.get(PREEMPTION_ENV, "cost"))
    swapped_out_tokens: int = 0
    swapped_in_tokens: int = 0
    tokens_invalidated: int = 0  # all streams, for /v1/stats
    _seq: Any = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.planner = Planner(self.policy)

    def open(self, rid: str, mode: Mode, final: bool = False) -> StreamInfo:
        now = self.clock()
        info = StreamInfo(rid=rid, mode=mode, seq=next(self._seq), opened_s=now)
        self.streams[rid] = info
        return info

    def info(self, req: Any) -> StreamInfo:
        """The stream of ``req``; a one-shot request gets a final pseudo-stream.

        The pseudo-stream lives on the ``Req`` itself (not in ``streams``), so it
        goes away with the request: the table holds streams only, and a server
        answering millions of ``/generate`` calls does not grow it."""
        info = self.streams.get(req.rid)
        if info is not None:
            return info
        info = getattr(req, ONESHOT_ATTR, None)
        if info is None:
            now = self.clock()
            info = StreamInfo(req.rid, "append", next(self._seq), now, final=True, chunks=1,
                              first_chunk_s=now, last_chunk_s=now, final_s=now, is_stream=False)
            setattr(req, ONESHOT_ATTR, info)
        return info

    def is_partial(self, req: Any) -> bool:
        """True while more input may come: such a request must never be sampled."""
        info = self.streams.get(req.rid)
        return info is not None and not info.final

    def as_stream(self, req: Any) -> Stream:
        """Adapter: the fields our policies read, taken from SGLang's ``Req``."""
        info = self.info(req)
        return Stream(
            rid=req.rid, mode=info.mode, seq=info.seq, opened_s=info.opened_s,
            input_ids=req.origin_input_ids, final=info.final, chunks=info.chunks,
            first_chunk_s=info.first_chunk_s, last_chunk_s=info.last_chunk_s,
            final_s=info.final_s, outputs=req.output_ids, computed=int(req.prefix_len or 0),
        )

    def key(self, req: Any, now: float | None = None) -> Key:
        return self.policy.key(self.as_stream(req), self.clock() if now is None else now)

    def victim_rank(self, req: Any, now: float) -> tuple:
        """Ascending = preempted first: the policy's ``victim_key``, else reverse
        priority (the paper's rule), as the simulator's preemption walk."""
        s = self.as_stream(req)
        vk = self.policy.victim_key(s, now)
        return tuple(vk) if vk is not None else tuple(-x for x in self.policy.key(s, now))

    def planned_partial(self, req: Any, n: int, planned: int) -> int:
        """Tokens of ``req``'s partial input to prefill now, of ``n`` that fit: the
        planner's hold and per-step cap (``planned`` partial tokens already
        admitted this step), the same rule the simulator walks."""
        return self.planner.cap(self.as_stream(req), n, self.clock(), planned,
                                holds=not self.holds_off)  # fmt: skip

    def forget(self, rid: str) -> StreamInfo | None:
        self.parked.pop(rid, None)
        return self.streams.pop(rid, None)


TABLE = StreamTable()


def reset_table(**kwargs: Any) -> StreamTable:
    """Replace the process-wide table (tests, and a scheduler re-init)."""
    global TABLE
    TABLE = StreamTable(**kwargs)
    return TABLE


def table() -> StreamTable:
    return TABLE
