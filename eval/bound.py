"""What no scheduler can beat: each query's TTFT on an engine dedicated to it.

Why: a P99 target (ANNS x30: 2.5x over non-streaming) is only a target if some
scheduler could reach it. Every query's TTFT under any scheduler is at least its TTFT
with the whole engine to itself, so the percentiles of these per-query figures bound
every scheduler's percentiles from below, and "non-streaming P99 / this P99" is the
most any streaming scheduler can gain at P99 on that trace.

The dedicated engine prefills each version of the input from the moment it reaches
the worker, in steps of the token budget, keeping across a new version only the
prefix it shares with the previous one (update mode) or everything (append mode).
Progress before the final chunk is counted at full rate, fractions of a step
included; after it the rest of the input is prefilled in whole steps, the last one
sampling, and the way in and out (the profile's fixed costs) are added. What it
leaves out (other queries, memory, idle penalties) only makes real TTFTs longer. It
is a bound up to how steps fall: a step in flight when the final lands, or another
split of the input into steps, can come out a little cheaper under the step model's
per-step and attention terms (the simulator beat it by at most ~1% per query on the
test traces, tests/test_bound.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.cost_model import CostModel
from stream2llm.lcp import common_prefix_len
from stream2llm.trace import Query


def _versions(q: Query) -> list[tuple[int, ...]]:
    """The input after each chunk."""
    if q.mode == "update":
        return [tuple(c.token_ids or ()) for c in q.chunks]
    out: list[tuple[int, ...]] = []
    acc: tuple[int, ...] = ()
    for c in q.chunks:
        acc = acc + tuple(c.token_ids or ())
        out.append(acc)
    return out


def _advance(cm: CostModel, start: int, end: int, budget: int, seconds: float) -> int:
    """Position reached from ``start`` (toward ``end``) in ``seconds`` of prefill."""
    pos = start
    while pos < end and seconds > 0:
        n = min(budget, end - pos)
        d = cm.engine_step_s([(pos, n)], 0)
        if d > seconds:
            return pos + int(n * seconds / d)
        seconds -= d
        pos += n
    return pos


def _finish_s(cm: CostModel, start: int, end: int, budget: int) -> float:
    """Seconds to prefill ``start..end`` in whole steps, the last one sampling."""
    t, pos = 0.0, start
    while pos < end:
        n = min(budget, end - pos)
        t += cm.engine_step_s([(pos, n)], 1 if pos + n == end else 0)
        pos += n
    return t


def dedicated_ttft(q: Query, cm: CostModel, budget: int, streaming: bool = True) -> float:
    """TTFT of ``q`` (from sending its final input) with the engine to itself."""
    fx = cm.fixed
    vs = _versions(q)
    if not streaming:
        n = len(vs[-1])
        return fx.chunk_s + fx.tokenize_s(n) + _finish_s(cm, 0, n, budget) + fx.out_s(False)

    def lands(j: int) -> float:  # the worker has chunk j
        c = q.chunks[j]
        return c.t_s + fx.chunk_s + fx.tokenize_s(len(c.token_ids or ()))

    done = 0
    for j in range(len(vs) - 1):
        if j and q.mode == "update":
            done = min(done, common_prefix_len(vs[j - 1], vs[j]))
        done = _advance(cm, done, len(vs[j]), budget, lands(j + 1) - lands(j))
    fin = vs[-1]
    if len(vs) > 1 and q.mode == "update":
        done = min(done, common_prefix_len(vs[-2], fin))
    done = min(done, len(fin) - 1)  # the first token needs a forward over the last one
    return lands(len(vs) - 1) - q.chunks[-1].t_s + _finish_s(cm, done, len(fin), budget) \
        + fx.out_s(True)


def dedicated_ttfts(queries: Sequence[Query], cm: CostModel, budget: int,
                    streaming: bool = True) -> list[float]:  # fmt: skip
    return [dedicated_ttft(q, cm, budget, streaming) for q in queries]
