"""Decode retraction for streams: victims by our policy, recompute vs swap by cost.

SGLang 0.5.23's ``ScheduleBatch.retract_decode`` asks the staticmethod
``_get_decode_retraction_order(reqs)`` for indices from most- to least-worth
keeping and pops victims from the end until decode memory fits. Replacing that
staticmethod (``HookType.REPLACE``) puts our policy in charge of the order; the
lowest-ranked request (largest key, or ``victim_key``) is retracted first.

How a victim gives up its KV is not a per-request choice in 0.5.23 outside
decode disaggregation: ``release_req`` frees it (recompute) unless the server
runs ``--disaggregation-mode decode`` with a host-pool retraction backup (swap).
``retract_mode`` gives our cost-model decision for the victim's cached tokens,
and ``retract_decode_around`` records it; docs/sglang-engine.md says what a GPU
session must add to act on "swap" in a single server.
"""

from __future__ import annotations

from typing import Any, Literal

from srt_ext.engines.sglang.state import StreamTable, table


def stream_retraction_order(reqs: list[Any], t: StreamTable | None = None) -> list[int]:
    """Indices of ``reqs``, most worth keeping first (SGLang pops from the end)."""
    t = t or table()
    now = t.clock()

    def rank(i: int) -> tuple:
        req = reqs[i]
        s = t.as_stream(req)
        vk = t.policy.victim_key(s, now)
        # ascending victim_key = evicted first; reverse priority otherwise
        return tuple(-x for x in vk) if vk is not None else t.policy.key(s, now)

    return sorted(range(len(reqs)), key=rank)


def cached_tokens(req: Any) -> int:
    """KV tokens the victim holds: what recompute throws away or swap moves."""
    return int(req.kv.kv_committed_len)


def retract_mode(req: Any, t: StreamTable | None = None) -> Literal["recompute", "swap"]:
    t = t or table()
    if t.cost_model is None:
        return "recompute"
    n = cached_tokens(req)
    return "recompute" if t.cost_model.prefill_s(n) < t.cost_model.swap_s(n) else "swap"


def retract_decode_around(original: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """``HookType.AROUND`` on ``ScheduleBatch.retract_decode``: note each victim's
    cost-model decision (before release resets its KV counters)."""
    t = table()
    modes = {req.rid: retract_mode(req, t) for req in batch.reqs}
    retracted, ratio, aborted = original(batch, *args, **kwargs)
    for req in retracted:
        t.decisions[modes[req.rid]] += 1
    return retracted, ratio, aborted
