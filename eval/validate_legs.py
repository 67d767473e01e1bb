"""Where a TTFT goes, measured and simulated (`stream2llm validate`).

Why: when a simulated percentile misses by a few milliseconds, the legs say whether
the way in, the worker or the way out is mispriced. The server stamps a final
request's way through the API room and the worker (meta_info), the client adds its
own send and receive times (eval.replay_query.legs), and the simulator records the
same three legs per query (eval.sim.SimResult.legs_s).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from eval.validate_report import Side

#: The simulator's three legs as sums of the measured ones.
SIM_LEGS = {"in": ("http_in", "api", "to_worker"), "worker": ("worker",),
            "out": ("from_worker", "out")}
LEG_PARTS = tuple(p for parts in SIM_LEGS.values() for p in parts)


def legs_rows(case: str, meas: dict[str, Side], sim: dict[str, Side]) -> list[dict[str, Any]]:
    """Where a TTFT goes, medians in ms: each simulated leg beside the measured legs
    it stands for, and the median over queries of (simulated - measured) for the same
    query: why a percentile disagrees (the way in, the worker or the way out)."""
    def med(xs: list[float]) -> float:
        return 1e3 * statistics.median(xs) if xs else math.nan

    rows = []
    for mode in ("non-streaming", "streaming"):
        m, s = meas[mode].legs_s, sim[mode].legs_s
        both = [q for q in m if q in s and all(p in m[q] for p in LEG_PARTS)]
        if not both:
            continue
        for leg, parts in SIM_LEGS.items():
            mine = {q: sum(m[q][p] for p in parts) for q in both}
            rows.append({"case": case, "mode": mode, "leg": leg,
                         "measured_ms": med(list(mine.values())),
                         "simulated_ms": med([s[q][leg] for q in both]),
                         "sim-meas_ms": med([s[q][leg] - mine[q] for q in both]),
                         "measured parts (ms)": " + ".join(
                             f"{p} {med([m[q][p] for q in both]):.2f}" for p in parts)})  # fmt: skip
    return rows
