"""Latency curves that drive preemption choices and the simulated engine.

A *profile* (JSON, one per hardware, in ``scheduler/profiles/``) holds measured
or derived points:

    prefill: seconds to prefill N tokens of one request from scratch
    swap:    seconds to copy N tokens' KV to the host and back (out + in)
    decode:  seconds of one decode step at batch b and context c

``CostModel`` fits each 1-D curve twice, a quadratic and a one-hinge
piecewise-linear function, and keeps the better by R^2 (warning under 0.9): the
artifact fits a quadratic while the paper's text says piecewise-linear, and the
data decide. For the simulator it also fits one *step* model
(scheduler/step_model.py) on every timed step of the profile together, so a
mixed batch of chunks and decode tokens gets one consistent time.

A profile may also carry ``"fixed"``: the costs real serving pays besides the
forward pass (:class:`FixedCosts`: per request, per chunk, per step, per
sampled token, tokenization per 1K tokens). Profiles measured with it time the
prefill and decode points *without* sampling (``stream2llm profile``), so the
simulator charges the LM head and sampler only to the items that sample.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.step_model import fit_step

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
class FixedCosts:
    """Seconds real serving pays outside the forward pass (all default to 0).

    Why: without them a simulated streaming TTFT tends to zero at low load, while a
    real server still pays HTTP, tokenization, scheduling and the sampler. Where the
    simulator charges each term (eval/sim.py):

    * ``chunk_s``: client send -> the worker has applied the input (HTTP request,
      API room, ZMQ, worker handling), per chunk and per one-shot request;
    * ``ack_s``: the worker applied a chunk -> the client has its reply (a streaming
      client sends the next chunk only then);
    * ``request_s``: the worker sampled the first token -> the client has it (event,
      API room, HTTP response), once per request;
    * ``result_s``: the same for a streaming client, which asks for the result with a
      request of its own once its final chunk is acknowledged (measured apart: that
      way out is not the one-shot response's; None: ``request_s``);
    * ``step_s``: the worker's own time per engine step beyond the forward pass
      (scheduling, batch building, committing the step);
    * ``sampled_token_s``: the LM head and sampler, per tile of ``sample_tile``
      sampling rows (1 on GPUs: per token; the CPU reference engine runs its LM head
      on fixed 8-row tiles, so 1..8 samples cost the same);
    * ``tokenize_s_per_1k``: a text input's way in per 1K tokens (tokenizing it in the
      API room; measured through a real server it also holds the body and JSON).

    ``source`` says, per term, where the number comes from (a measurement or a
    published figure with its reference, or that it is an estimate).
    """

    request_s: float = 0.0
    result_s: float | None = None
    chunk_s: float = 0.0
    ack_s: float = 0.0
    step_s: float = 0.0
    sampled_token_s: float = 0.0
    sample_tile: int = 1
    tokenize_s_per_1k: float = 0.0
    source: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> FixedCosts:
        f = dict(profile.get("fixed") or {})
        known = {k: f[k] for k in cls.__dataclass_fields__ if k in f}
        bad = [k for k, v in known.items() if k != "source" and not (
            k == "result_s" and v is None) and (not isinstance(v, (int, float)) or v < 0)]  # fmt: skip
        if bad:
            raise ValueError(f"profile {profile.get('name')!r}: bad fixed costs {bad}")
        return cls(**known)

    def sampled_s(self, samples: int) -> float:
        """LM head + sampler for ``samples`` sampling rows in one step."""
        if samples <= 0:
            return 0.0
        return -(-samples // max(1, self.sample_tile)) * self.sampled_token_s

    def out_s(self, streaming: bool) -> float:
        """First token sampled -> the client has it."""
        return self.result_s if streaming and self.result_s is not None else self.request_s

    def tokenize_s(self, tokens: int) -> float:
        return self.tokenize_s_per_1k * tokens / 1000.0


class CostModel:
    """Fitted latency curves for one hardware profile."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self.profile = profile
        self.name: str = profile.get("name", "unnamed")
        self.derived: bool = bool(profile.get("derived", False))
        pre, swp = profile["prefill"], profile["swap"]
        self.fixed = FixedCosts.from_profile(profile)
        self.prefill = fit_curve(pre["tokens"], pre["seconds"], f"{self.name} prefill")
        self.swap = fit_curve(swp["tokens"], swp["seconds"], f"{self.name} swap")
        self.step = fit_step(profile)
        self.kv_bytes_per_token: int = int(profile.get("kv_bytes_per_token", 131072))
        self.kv_capacity_tokens: int | None = profile.get("kv_capacity_tokens")
        idle = profile.get("idle") or {}
        self._idle = (tuple(idle.get("idle_s", ())), tuple(idle.get("seconds", ())))

    # --- what the scheduler asks -------------------------------------------------
    def prefill_s(self, n: int) -> float:
        """Recomputing ``n`` tokens: at least one step, so with its fixed overhead."""
        return self.prefill(n) + self.fixed.step_s

    def swap_s(self, n: int) -> float:
        """Swap out + swap in of ``n`` tokens' KV."""
        return self.swap(n)

    def recompute_or_swap(self, n: int) -> str:
        """The cheaper way to preempt ``n`` cached tokens."""
        return "recompute" if self.prefill_s(n) < self.swap_s(n) else "swap"

    # --- what the simulator asks -------------------------------------------------
    def step_s(self, items: Iterable[tuple[int, int]], samples: int = 0) -> float:
        """One forward over ``(start, n)`` items (prefill chunks and decode tokens)."""
        return self.step.of(list(items), samples)

    def sampled_s(self, samples: int) -> float:
        """The LM head and sampler for ``samples`` rows, unless the step model prices them."""
        return 0.0 if self.step.prices_sampling else self.fixed.sampled_s(samples)

    def decode_step_s(self, batch: int, context: int) -> float:
        return self.step_s([(context, 1)] * batch, batch) + self.sampled_s(batch)

    def engine_step_s(self, items: Iterable[tuple[int, int]], samples: int) -> float:
        """What the server pays for one step: its fixed overhead, the forward pass over
        ``(start, n)`` items and the sampling of ``samples`` rows."""
        fwd = self.step_s(items, samples)
        if fwd <= 0.0:
            return 0.0
        return self.fixed.step_s + fwd + self.sampled_s(samples)

    def idle_s(self, gap: float) -> float:
        """Extra seconds of a step that starts ``gap`` seconds after the engine went
        idle (caches and clocks went cold): the profile's ``idle`` points,
        interpolated, 0 back to back, flat past the last point; 0 without them."""
        xs, ys = self._idle
        if not xs or gap <= 0.0:
            return 0.0
        return float(np.interp(gap, (0.0, *xs), (0.0, *ys)))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "derived": self.derived,
            "prefill_fit": {"kind": self.prefill.kind, "r2": round(self.prefill.r2, 5)},
            "swap_fit": {"kind": self.swap.kind, "r2": round(self.swap.r2, 5)},
            "step_fit_r2": round(self.step.r2, 5),
            "step_terms": "smooth + per-call (layout)" if self.step.layout else "smooth",
            "fixed": {k: v for k, v in vars(self.fixed).items() if k != "source"},
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
