"""How much of each update-mode version its predecessor already holds (the LCP profile).

For any update-mode token-id trace, recorded or synthetic: the prefix consecutive
versions share is what a streaming server can keep, the rest it must prefill again
(docs/workloads.md, "LCP between versions"; ``stream2llm record-traces`` prints it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from stream2llm.lcp import common_prefix_len
from stream2llm.trace import Query


@dataclass(frozen=True)
class LcpProfile:
    """Prefix shared by consecutive versions, as a fraction of the *new* version."""

    updates: int
    mean: float
    p10: float
    p50: float
    p90: float
    changed_mean: float  # over updates that change the input (not a repeated final)
    changed_p50: float
    final_same: float  # share of multi-version queries whose final repeats the previous
    final_mean: float  # the final version vs the one before it (what TTFT must prefill)
    final_weighted: float  # sum of final LCPs / sum of final lengths
    versions_mean: float
    final_tokens_mean: float


def lcp_profile(queries: Iterable[Query]) -> LcpProfile:
    """LCP statistics of update-mode token-id queries (single-version queries count
    towards the means of versions and lengths only)."""
    shares, changed, finals, same, fl, ft, nv = [], [], [], [], 0, 0, []
    for q in queries:
        vs = [c.token_ids or () for c in q.chunks]
        nv.append(len(vs))
        ft += len(vs[-1])
        for a, b in pairwise(vs):
            shares.append(common_prefix_len(a, b) / max(len(b), 1))
            if tuple(a) != tuple(b):
                changed.append(shares[-1])
        if len(vs) > 1:
            lcp = common_prefix_len(vs[-2], vs[-1])
            finals.append(lcp / max(len(vs[-1]), 1))
            same.append(tuple(vs[-2]) == tuple(vs[-1]))
            fl += lcp
    if not nv:
        raise ValueError("no queries")
    s = np.asarray(shares or [math.nan])
    return LcpProfile(
        updates=len(shares),
        mean=float(s.mean()),
        p10=float(np.percentile(s, 10)),
        p50=float(np.percentile(s, 50)),
        p90=float(np.percentile(s, 90)),
        changed_mean=float(np.mean(changed)) if changed else math.nan,
        changed_p50=float(np.median(changed)) if changed else math.nan,
        final_same=float(np.mean(same)) if same else math.nan,
        final_mean=float(np.mean(finals)) if finals else math.nan,
        final_weighted=fl / max(ft, 1),
        versions_mean=float(np.mean(nv)),
        final_tokens_mean=ft / len(nv),
    )
