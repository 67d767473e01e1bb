"""Latency curves that drive preemption choices and the simulated engine.

A *profile* (JSON, one per hardware, in ``scheduler/profiles/``) holds measured
or derived points:

    prefill: seconds to prefill N tokens of one request from scratch
    swap:    seconds to copy N tokens' KV to the host and back (out + in)
    decode:  seconds of one decode step at batch b and context c

``CostModel`` fits each 1-D curve twice, a quadratic and a one-hinge
piecewise-linear function, and keeps the better by R^2 (warning under 0.9): the
artifact fits a quadratic while the paper's text says piecewise-linear, and the
data decide. For the simulator it also fits one linear *step* model
``t = a + b*T + c*P`` (T new tokens in the batch, P query-key pairs of
attention) on the prefill and decode points together, so a mixed batch of
chunks and decode tokens gets one consistent time.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILE_DIR = Path(__file__).with_name("profiles")
R2_WARN = 0.9


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


@dataclass(frozen=True)
class Curve:
    """A fitted 1-D latency curve ``seconds(n)``."""

    kind: str  # "quadratic" | "piecewise"
    coef: tuple[float, ...]  # quadratic: (c2, c1, c0); piecewise: (a, b, c, knee)
    r2: float
    floor: float  # smallest observed latency: no fit may predict less

    def __call__(self, n: float) -> float:
        if n <= 0:
            return 0.0
        if self.kind == "quadratic":
            c2, c1, c0 = self.coef
            t = (c2 * n + c1) * n + c0
        else:
            a, b, c, knee = self.coef
            t = a + b * n + c * max(0.0, n - knee)
        return max(t, self.floor)


def fit_quadratic(x: np.ndarray, y: np.ndarray) -> Curve:
    c2, c1, c0 = np.polyfit(x, y, 2)
    yhat = np.polyval((c2, c1, c0), x)
    return Curve("quadratic", (float(c2), float(c1), float(c0)), _r2(y, yhat), float(y.min()))


def fit_piecewise(x: np.ndarray, y: np.ndarray) -> Curve:
    """Best single-hinge fit ``a + b*n + c*max(0, n-knee)``, knee among the points."""
    best: tuple[float, tuple[float, ...]] | None = None
    for knee in x[1:-1] if len(x) > 3 else x[:1]:
        A = np.stack([np.ones_like(x), x, np.maximum(0.0, x - knee)], axis=1)
        sol, *_ = np.linalg.lstsq(A, y, rcond=None)
        sse = float(np.sum((A @ sol - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, (float(sol[0]), float(sol[1]), float(sol[2]), float(knee)))
    assert best is not None
    coef = best[1]
    yhat = coef[0] + coef[1] * x + coef[2] * np.maximum(0.0, x - coef[3])
    return Curve("piecewise", coef, _r2(y, yhat), float(y.min()))


def fit_curve(xs: Sequence[float], ys: Sequence[float], what: str = "curve") -> Curve:
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) < 3:
        raise ValueError(f"{what}: need at least 3 points to fit, got {len(x)}")
    cands = [fit_quadratic(x, y), fit_piecewise(x, y)]
    best = max(cands, key=lambda c: c.r2)
    if best.r2 < R2_WARN:
        warnings.warn(f"{what}: best fit R^2 {best.r2:.3f} < {R2_WARN}", stacklevel=2)
    return best


@dataclass(frozen=True)
class StepModel:
    """``t = a + b*T + c*P``: T new tokens in the batch, P attention query-key pairs."""

    a: float
    b: float
    c: float
    r2: float

    def __call__(self, tokens: float, pairs: float) -> float:
        return self.a + self.b * tokens + self.c * pairs


def attention_pairs(start: int, n: int) -> float:
    """Query-key pairs of computing positions ``[start, start+n)`` causally."""
    return n * start + n * (n + 1) / 2


class CostModel:
    """Fitted latency curves for one hardware profile."""

    def __init__(self, profile: dict) -> None:
        self.profile = profile
        self.name: str = profile.get("name", "unnamed")
        self.derived: bool = bool(profile.get("derived", False))
        pre, swp = profile["prefill"], profile["swap"]
        self.prefill = fit_curve(pre["tokens"], pre["seconds"], f"{self.name} prefill")
        self.swap = fit_curve(swp["tokens"], swp["seconds"], f"{self.name} swap")
        self.step = self._fit_step(profile)
        self.kv_bytes_per_token: int = int(profile.get("kv_bytes_per_token", 131072))
        self.kv_capacity_tokens: int | None = profile.get("kv_capacity_tokens")

    @staticmethod
    def _fit_step(profile: dict) -> StepModel:
        rows: list[tuple[float, float, float]] = []
        for n, t in zip(profile["prefill"]["tokens"], profile["prefill"]["seconds"], strict=True):
            rows.append((n, attention_pairs(0, int(n)), t))
        dec = profile.get("decode")
        if dec:
            for b, ctx, t in zip(dec["batch"], dec["context"], dec["seconds"], strict=True):
                rows.append((b, b * ctx, t))
        arr = np.asarray(rows, dtype=float)
        # relative least squares: short steps matter as much as long ones
        w = 1.0 / arr[:, 2]
        A = np.stack([np.ones(len(arr)), arr[:, 0], arr[:, 1]], axis=1)
        sol, *_ = np.linalg.lstsq(A * w[:, None], arr[:, 2] * w, rcond=None)
        sol = np.maximum(sol, 0.0)
        r2 = _r2(arr[:, 2], A @ sol)
        return StepModel(float(sol[0]), float(sol[1]), float(sol[2]), r2)

    # --- what the scheduler asks -------------------------------------------------
    def prefill_s(self, n: int) -> float:
        return self.prefill(n)

    def swap_s(self, n: int) -> float:
        """Swap out + swap in of ``n`` tokens' KV."""
        return self.swap(n)

    def recompute_or_swap(self, n: int) -> str:
        """The cheaper way to preempt ``n`` cached tokens."""
        return "recompute" if self.prefill_s(n) < self.swap_s(n) else "swap"

    # --- what the simulator asks -------------------------------------------------
    def step_s(self, items: Iterable[tuple[int, int]]) -> float:
        """One engine step over ``(start, n)`` items (prefill chunks and decode tokens)."""
        tokens = 0
        pairs = 0.0
        for start, n in items:
            tokens += n
            pairs += n * start + n * (n + 1) / 2
        return self.step(tokens, pairs) if tokens else 0.0

    def decode_step_s(self, batch: int, context: int) -> float:
        return self.step(batch, batch * context)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "derived": self.derived,
            "prefill_fit": {"kind": self.prefill.kind, "r2": round(self.prefill.r2, 5)},
            "swap_fit": {"kind": self.swap.kind, "r2": round(self.swap.r2, 5)},
            "step_fit_r2": round(self.step.r2, 5),
        }

    @classmethod
    def load(cls, name_or_path: str | Path) -> CostModel:
        """A profile by name (``scheduler/profiles/NAME.json``) or by path."""
        p = Path(name_or_path)
        if not p.suffix:
            p = PROFILE_DIR / f"{name_or_path}.json"
        if not p.exists():
            known = sorted(q.stem for q in PROFILE_DIR.glob("*.json"))
            raise FileNotFoundError(f"no profile {name_or_path!r}; known: {known}")
        return cls(json.loads(p.read_text()))


def available_profiles() -> list[str]:
    return sorted(q.stem for q in PROFILE_DIR.glob("*.json"))
