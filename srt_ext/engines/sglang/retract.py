"""Decode retraction for streams: victims by our policy, recompute vs swap by cost.

SGLang 0.5.23's ``ScheduleBatch.retract_decode`` asks the staticmethod
``_get_decode_retraction_order(reqs)`` for indices from most- to least-worth
keeping and pops victims from the end until decode memory fits. Replacing that
staticmethod (``HookType.REPLACE``) puts our policy in charge of the order; the
lowest-ranked request (largest key, or ``victim_key``) is retracted first.

A retracted decode request gives up its KV by SGLang's ``release_req``, i.e.
it is recomputed; ``retract_decode_around`` counts each as what ran. Idle
streams (parked, or queued with their path pinned) are preempted before SGLang
has to retract anyone, and those get recompute or a real swap by the cost model
(``pressure``). ``retract_mode`` is the cost-model choice for a victim's cached
tokens, the same rule.
"""

from __future__ import annotations

from typing import Any, Literal

from srt_ext.engines.sglang.pressure import rule
from srt_ext.engines.sglang.state import StreamTable, table


def stream_retraction_order(reqs: list[Any], t: StreamTable | None = None) -> list[int]:
    """Indices of ``reqs``, most worth keeping first (SGLang pops from the end)."""
    t = t or table()
    now = t.clock()
    return sorted(range(len(reqs)), key=lambda i: t.victim_rank(reqs[i], now), reverse=True)


def cached_tokens(req: Any) -> int:
    """KV tokens the victim holds: what recompute throws away or swap moves."""
    return int(req.kv.kv_committed_len)


def retract_mode(req: Any, t: StreamTable | None = None) -> Literal["recompute", "swap"]:
    n = cached_tokens(req)
    return rule(t or table()).choose(n, n)


def retract_decode_around(original: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """``HookType.AROUND`` on ``ScheduleBatch.retract_decode``: count each victim
    as what SGLang ran for it, a recompute."""
    t = table()
    retracted, ratio, aborted = original(batch, *args, **kwargs)
    t.decisions["recompute"] += len(retracted)
    return retracted, ratio, aborted
