"""The simulator's price of one engine step, fitted on a profile's points.

``t = a + b*T + c*P + d*C + e*I`` (T new tokens, P attention query-key pairs,
C KV tokens the items attend over, I items) is the smooth part every engine
has. An engine that runs its work in fixed-shape calls also pays per call, and
that cost is not smooth in T: the CPU engine's exact path covers a step's rows
with tiles of probed sizes (116 rows are four dense calls, 128 rows one), runs
attention per 64-position block, and its LM head on tiles of sampling rows.
A profile that declares its engine's ``"layout"`` gets three more terms, priced
per call: ``f*dense + g*blocks + h*lm``. Fitted on power-of-two points only, the
smooth model under-predicted the steps a server really ran by 1.5-3x
(docs/performance.md, "Simulator vs the real engine"); the profile's ``steps``
(a seeded random design of mixed steps, sampling included) fix that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream2llm.tiling import block_span, split_sizes

SMOOTH = ("one", "tokens", "pairs", "kv", "items")
CALLS = ("dense", "blocks", "lm")


@dataclass(frozen=True)
class Layout:
    """How the engine shapes its calls: dense tile sizes, attention block, LM tiles."""

    dense_tiles: tuple[int, ...]
    lm_tiles: tuple[int, ...]
    attn_block: int

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> Layout | None:
        lay = profile.get("layout")
        if not lay:
            return None
        return cls(tuple(lay["dense_tiles"]), tuple(lay["lm_tiles"]), int(lay["attn_block"]))


def attention_pairs(start: int, n: int) -> float:
    """Query-key pairs of computing positions ``[start, start+n)`` causally."""
    return n * start + n * (n + 1) / 2


def features(items: Iterable[tuple[int, int]], samples: int,
             layout: Layout | None) -> dict[str, float]:  # fmt: skip
    """The step's terms: ``items`` are ``(start, n)``, ``samples`` rows sample."""
    f = dict.fromkeys(SMOOTH + CALLS, 0.0)
    f["one"] = 1.0
    for start, n in items:
        f["tokens"] += n
        f["items"] += 1
        f["pairs"] += attention_pairs(start, n)
        f["kv"] += start + n
        if layout is not None:
            f["blocks"] += len(block_span(start, n, layout.attn_block))
    if layout is not None:
        f["dense"] = len(split_sizes(int(f["tokens"]), layout.dense_tiles))
        f["lm"] = len(split_sizes(samples, layout.lm_tiles))
    return f


@dataclass(frozen=True)
class StepModel:
    """``t = a + b*T + c*P + d*C + e*I (+ f*dense + g*blocks + h*lm)``. ``d`` and
    ``e`` are fitted only when the profile has points that tell them apart
    (``chunk``: prefill at depth; ``batch``/``steps``: several items per step);
    otherwise they are 0 and C defaults to T. The call terms exist only with a
    layout; ``prices_sampling`` says whether ``h`` (the LM head and sampler) was
    fitted, in which case the profile's ``fixed.sampled_token_s`` is not added."""

    a: float
    b: float
    c: float
    r2: float
    d: float = 0.0
    e: float = 0.0
    f: float = 0.0
    g: float = 0.0
    h: float = 0.0
    layout: Layout | None = None

    @property
    def prices_sampling(self) -> bool:
        return self.layout is not None

    def __call__(self, tokens: float, pairs: float, kv: float | None = None,
                 items: int = 1) -> float:  # fmt: skip
        kv = tokens if kv is None else kv
        return self.a + self.b * tokens + self.c * pairs + self.d * kv + self.e * items

    def of(self, items: Sequence[tuple[int, int]], samples: int = 0) -> float:
        """Seconds of one forward over ``(start, n)`` items, ``samples`` of them sampling
        (sampling is priced only when ``prices_sampling``)."""
        x = features(items, samples, self.layout)
        if not x["tokens"]:
            return 0.0
        t = self(x["tokens"], x["pairs"], x["kv"], int(x["items"]))
        return t + self.f * x["dense"] + self.g * x["blocks"] + self.h * x["lm"]


def _points(profile: dict[str, Any]) -> list[tuple[list[tuple[int, int]], int, float]]:
    """The profile's timed steps as ``(items, samples, seconds)``: its ``steps``
    design when it has one (timed as a server runs them, each once), else every
    point (prefill, decode, chunks at depth, batches: each timed repeatedly)."""
    pts: list[tuple[list[tuple[int, int]], int, float]] = []
    steps = profile.get("steps") or {}
    if steps:
        for its, t in zip(steps["items"], steps["seconds"], strict=True):
            pts.append(([(int(s), int(n)) for s, n, _ in its], sum(int(x[2]) for x in its), t))
        return pts
    pre = profile["prefill"]
    pts += [([(0, int(n))], 0, t) for n, t in zip(pre["tokens"], pre["seconds"], strict=True)]
    dec = profile.get("decode") or {}
    for b, ctx, t in zip(dec.get("batch", ()), dec.get("context", ()), dec.get("seconds", ()),
                         strict=True):  # fmt: skip
        pts.append(([(int(ctx), 1)] * int(b), 0, t))
    chunk, batch = profile.get("chunk") or {}, profile.get("batch") or {}
    for st, n, t in zip(chunk.get("start", ()), chunk.get("tokens", ()),
                        chunk.get("seconds", ()), strict=True):  # fmt: skip
        pts.append(([(int(st), int(n))], 0, t))
    for k, n, t in zip(batch.get("items", ()), batch.get("tokens", ()),
                       batch.get("seconds", ()), strict=True):  # fmt: skip
        pts.append(([(0, int(n))] * int(k), 0, t))
    return pts


def fit_step(profile: dict[str, Any]) -> StepModel:
    """Non-negative least squares on relative error (short steps matter as much as
    long ones). Without ``chunk``/``batch``/``steps`` points only ``a, b, c`` are
    identifiable (the decode points' C and I equal their T)."""
    layout = Layout.from_profile(profile)
    pts = _points(profile)
    cols = list(SMOOTH[:3])
    extended = any(profile.get(k) for k in ("chunk", "batch", "steps"))
    if extended:
        cols += ["kv", "items"]
    if layout is not None:
        cols += list(CALLS)
    rows = [features(its, s, layout) for its, s, _ in pts]
    A = np.array([[r[c] for c in cols] for r in rows], dtype=float)
    y = np.array([t for *_, t in pts], dtype=float)
    w = 1.0 / y
    if extended:
        from scipy.optimize import nnls

        sol, _ = nnls(A * w[:, None], y * w)
    else:
        sol, *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
        sol = np.maximum(sol, 0.0)
    coef = dict(zip(cols, (float(v) for v in sol), strict=True))
    yhat = A @ sol
    ss_res, ss_tot = float(np.sum((y - yhat) ** 2)), float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return StepModel(coef["one"], coef["tokens"], coef["pairs"], r2, coef.get("kv", 0.0),
                     coef.get("items", 0.0), coef.get("dense", 0.0), coef.get("blocks", 0.0),
                     coef.get("lm", 0.0), layout)  # fmt: skip
