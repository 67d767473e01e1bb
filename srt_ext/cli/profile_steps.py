"""The mixed steps `stream2llm profile` times for the simulator's step model.

Why a random design: a server's steps are not the profile's clean points. A
streamed chunk is 7 or 116 tokens at depth 94 or 1,050, several of them share a
step with decode tokens, and some items sample. The CPU engine's exact path
pays per fixed-shape call (dense tiles, 64-position attention blocks, LM-head
tiles), so its cost is not smooth in the token count, and a fit on powers of
two alone under-predicted served steps by 1.5-3x. The design is seeded, so two
profiles of one machine time the same steps.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from srt_ext.cli.profile import items_step_s

Item = tuple[int, int, int]  # start, new tokens, samples (0/1)


def step_design(max_tokens: int, count: int, seed: int = 0, sample: bool = True) -> list[list[Item]]:
    """``count`` steps like a streaming server's: one chunk at a random depth (45%),
    2-6 chunks together (30%), a decode batch with or without a chunk (25%). No step
    holds more than ``5 * max_tokens`` KV tokens."""
    rng = random.Random(seed)
    top = max(16, max_tokens)

    def flag() -> int:
        return int(sample and rng.random() < 0.5)

    out: list[list[Item]] = []
    for _ in range(count):
        r = rng.random()
        if r < 0.45:
            start = rng.choice([0, rng.randint(0, top * 3 // 4)])
            items = [(start, rng.randint(1, max(1, min(top // 2, top - start))), flag())]
        elif r < 0.75:
            items = [(rng.randint(0, top // 2), rng.randint(1, max(1, top // 10)), flag())
                     for _ in range(rng.randint(2, 6))]  # fmt: skip
        else:
            items = [(rng.randint(8, top // 2), 1, int(sample)) for _ in range(rng.randint(1, 8))]
            if rng.random() < 0.5:
                items.append((rng.randint(0, top // 2), rng.randint(1, max(1, top // 8)), flag()))
        out.append(items)
    return out


def engine_layout(engine: Any) -> dict[str, Any] | None:
    """The fixed-shape calls the engine makes, when it makes them (the CPU exact
    path's sized layout); None for engines whose cost is smooth in the token count."""
    from srt_ext.engines.reference.llama import SIZED_ATTN_BLOCK

    plan = getattr(getattr(engine, "model", None), "plan", None)
    if not getattr(engine, "exact", False) or plan is None or not plan.sized:
        return None
    return {"dense_tiles": list(plan.dense), "lm_tiles": list(plan.lm),
            "attn_block": SIZED_ATTN_BLOCK}  # fmt: skip


def measure_steps(engine: Any, max_tokens: int, count: int, passes: int = 2) -> dict[str, list]:
    """``{"items": [[[start, n, sample], ...], ...], "seconds": [...]}``; items sample
    only where the engine's layout lets the step model price the LM head per call.

    Each step runs once per pass, back to back, in design order, and its seconds are
    the mean over ``passes``: a server never runs the same step twice in a row, and
    timing one step repeatedly (warm caches for exactly its activations and KV)
    came out ~10% faster than the same steps run once each (measured, tiny model).
    """
    design = step_design(max_tokens, count, sample=engine_layout(engine) is not None)
    for d in design[:8]:  # warm-up: the first steps after loading are slower still
        items_step_s(engine, d)
    runs = [[items_step_s(engine, d) for d in design] for _ in range(max(1, passes))]
    secs = [round(statistics.fmean(r[i] for r in runs), 7) for i in range(len(design))]
    return {"items": [[list(it) for it in d] for d in design], "seconds": secs}


IDLE_GAPS = (0.002, 0.01, 0.05, 0.2)


def measure_idle(engine: Any, profile: dict[str, Any], max_tokens: int,
                 count: int = 48) -> dict[str, list[float]]:  # fmt: skip
    """Extra seconds a step pays when the engine sat idle before it.

    Why: at low load a server's steps start after idle gaps, and caches and clocks
    go cold meanwhile: after 200 ms idle a step ran ~1.2 ms slower than back to
    back (measured, tiny model). Steps of another draw of the design run once each
    after sleeping one of ``IDLE_GAPS``; the penalty at a gap is the median of
    (measured - the step model fitted on ``profile``'s back-to-back steps).
    """
    from scheduler.step_model import fit_step

    model = fit_step(profile)
    design = step_design(max_tokens, count * len(IDLE_GAPS), seed=1,
                         sample=engine_layout(engine) is not None)  # fmt: skip
    excess: dict[float, list[float]] = {g: [] for g in IDLE_GAPS}
    for k, d in enumerate(design):
        gap = IDLE_GAPS[k % len(IDLE_GAPS)]
        time.sleep(gap)
        t = items_step_s(engine, d)
        excess[gap].append(t - model.of([(st, n) for st, n, _ in d], sum(s for *_, s in d)))
    return {"idle_s": list(IDLE_GAPS),
            "seconds": [round(max(0.0, statistics.median(excess[g])), 7) for g in IDLE_GAPS]}
