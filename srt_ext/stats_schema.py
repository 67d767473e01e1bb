"""``GET /v1/stats``: the one answer both engines give (same keys, same meaning).

Why one schema: a dashboard, ``stream2llm replay`` or a test reads the same keys
whichever engine serves, so a key missing on one engine (or spelled differently)
is a bug this module makes impossible: both engines build an ``EngineStats``
(every field a keyword, none optional to pass) and answer ``as_dict`` of it.
Counters count what was executed, not what a policy decided. Every value is a
number (clients such as ``stream2llm replay`` subtract two answers to get a pass's
delta), so a figure an engine does not measure reads 0 and is documented as such.
Values are ints and floats only: the reference worker's ``StatsReply`` carries them.

Keys (tokens are KV slots of the device pool unless said otherwise):

- ``kv_capacity_tokens``: the pool's size.
- ``kv_used_tokens``: slots holding KV (capacity - free).
- ``kv_free_tokens``: slots free now.
- ``kv_pinned_tokens``: slots held by live requests and parked streams (not evictable).
- ``kv_evictable_tokens``: cached prefixes nobody holds (freed under pressure).
- ``kv_host_tokens``: tokens of swapped-out streams held in host memory.
- ``streams_open``: streams opened and not finished (partial or generating).
- ``streams_parked``: partial streams whose received input is all computed,
  waiting for their next chunk.
- ``requests_waiting``: requests (final input) not admitted to a step yet.
- ``requests_running``: requests (final input) admitted and not finished.
- ``tokens_invalidated``: computed input tokens dropped by updates and LCP cuts.
- ``preemptions_recompute`` / ``preemptions_swap``: preemptions executed by
  dropping KV (recomputed later) / by copying it to host memory.
- ``preemptions``: the same two counts as ``{"recompute": n, "swap": n}`` (the
  reference server's original shape, kept for its clients and ``/metrics``).
- ``swap_out_tokens`` / ``swap_in_tokens``: tokens copied to / back from host memory.
- ``steps``: engine steps (forward passes) run so far.
- ``engine_forward_s`` / ``engine_step_s``: seconds spent in forwards / whole steps;
  always 0.0 on SGLang's engine, whose scheduler does not expose its step times.
- ``max_context_tokens``: the longest input + output a request may have.
"""

from __future__ import annotations

from typing import Any

import msgspec


class EngineStats(msgspec.Struct, kw_only=True, frozen=True):
    """Every key of ``/v1/stats`` (documented in the module docstring)."""

    kv_capacity_tokens: int
    kv_used_tokens: int
    kv_free_tokens: int
    kv_pinned_tokens: int
    kv_evictable_tokens: int
    kv_host_tokens: int
    streams_open: int
    streams_parked: int
    requests_waiting: int
    requests_running: int
    tokens_invalidated: int
    preemptions_recompute: int
    preemptions_swap: int
    swap_out_tokens: int
    swap_in_tokens: int
    steps: int
    engine_forward_s: float
    engine_step_s: float
    max_context_tokens: int

    def as_dict(self) -> dict[str, Any]:
        """The JSON object served (plus ``preemptions``, derived, never passed)."""
        out: dict[str, Any] = msgspec.structs.asdict(self)
        out["preemptions"] = {"recompute": self.preemptions_recompute,
                              "swap": self.preemptions_swap}  # fmt: skip
        return out


STATS_KEYS: frozenset[str] = frozenset(EngineStats.__struct_fields__) | {"preemptions"}
