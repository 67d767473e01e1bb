"""What `stream2llm validate` measures on its own server before the measured passes.

* **HTTP terms.** Timed on an idle server with one request at a time
  (srt_ext/cli/profile_fixed.py) each way in and out came out ~1 ms below what the
  replay pays under its own load (1.7-1.9 ms vs 0.9-1.9 ms in, 2.0-2.3 ms vs 0.9-1.7
  ms out, the idle figure changing 2x between runs), so they are taken from an
  unmeasured calibration pass after the warm-up (other queries of the first case, at
  real speed, the same client and server), from the per-request legs
  (eval/validate_legs.py). The time-compressed warm-up itself priced them 0.5-1 ms
  high: a fresh server's transient.
* **Engine speed.** This VM's speed drifts by 5-15% within minutes, and the profile
  is taken once, minutes before the replays; the same calibration pass's logged
  steps say how fast the engine runs now (measured / predicted forward time), and
  ``slowed`` scales the profile's engine by that factor.

No measured pass is predicted from its own timings.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from eval.validate_legs import LEG_PARTS
from eval.validate_report import Side

MIN_SPEED_STEPS = 20  # fewer logged steps than this: no speed factor (1.0)


def http_terms(passes: dict[str, Side], tokenize_s_per_1k: float) -> dict[str, float]:
    """``chunk_s``, ``request_s`` and ``result_s`` from a replay's legs (medians):
    the way in less its tokenization (the profile's slope), plus the worker link at
    its low decile (``to_worker`` also holds the wait for the step in flight, which the
    simulator charges itself); the way out of a one-shot and of a stream's result."""
    legs = {mode: [v for v in passes[mode].legs_s.values() if all(p in v for p in LEG_PARTS)]
            for mode in ("non-streaming", "streaming")}  # fmt: skip
    if not all(legs.values()):
        raise ValueError("the pass has no per-leg stamps (the server is too old?)")
    both = legs["non-streaming"] + legs["streaming"]
    link = statistics.quantiles([v["to_worker"] for v in both], n=10)[0]
    way_in = [v["http_in"] + v["api"] - tokenize_s_per_1k * v.get("tokens", 0) / 1000
              for v in both]  # fmt: skip
    out = {mode: statistics.median(v["from_worker"] + v["out"] for v in vs)
           for mode, vs in legs.items()}  # fmt: skip
    return {"chunk_s": max(0.0, statistics.median(way_in) + max(0.0, link)),
            "request_s": out["non-streaming"], "result_s": out["streaming"]}


def add_http_terms(prof: Path, url: str) -> None:
    """The terms the calibration pass cannot price, measured on the idle server and
    stored: a chunk's reply (``ack_s``) and the way in per 1K tokens (the slope that
    ``http_terms`` takes off the way in)."""
    from srt_ext.cli.profile import write_profile
    from srt_ext.cli.profile_fixed import http_terms_at

    profile = json.loads(prof.read_text())
    terms = http_terms_at(url, 7)
    profile["fixed"] |= {k: round(terms[k], 7) for k in ("ack_s", "tokenize_s_per_1k")}
    where = "measured by `stream2llm validate` on its own `stream2llm serve`"
    profile["fixed"]["source"] |= {
        "ack_s": f"{where}: chunk round trip minus its way in",
        "tokenize_s_per_1k": f"{where}: the way in, 12 vs 800 words (body, JSON, tokenizer)",
    }
    write_profile(profile, prof)


def add_pass_terms(prof: Path, passes: dict[str, Side], quiet: bool = False) -> None:
    """The way in and out as an unmeasured calibration pass paid them."""
    from srt_ext.cli.profile import write_profile

    profile = json.loads(prof.read_text())
    fixed = profile["fixed"]
    terms = http_terms(passes, fixed.get("tokenize_s_per_1k", 0.0))
    where = ("measured by `stream2llm validate` on its own server: an unmeasured calibration "
             "pass after the warm-up (other queries of the first case, same client and load "
             "as the replay; per-request legs, medians)")
    fixed |= {k: round(v, 7) for k, v in terms.items()}
    fixed["source"] |= {
        "chunk_s": f"{where}: client send -> worker applied, less tokenization",
        "request_s": f"{where}: worker first token -> client has the /generate response",
        "result_s": f"{where}: worker first token -> a stream's client has its result",
    }
    write_profile(profile, prof)
    if not quiet:
        print("HTTP terms from the calibration pass (ms): " + ", ".join(
            f"{k} {1e3 * v:.2f}" for k, v in terms.items()), file=sys.stderr)  # fmt: skip


def engine_speed(log: Path, first_step: int, cm: Any) -> tuple[float, int]:
    """(measured / predicted forward time, steps) of the worker's steps logged from
    line ``first_step`` on: how much slower than its profile the engine ran just now."""
    from eval.step_residuals import load_steps, totals

    rows = load_steps(log)[first_step:] if log.exists() else []
    meas, pred, n = totals(rows, cm)
    return (meas / pred if pred > 0 and n >= MIN_SPEED_STEPS else 1.0), n


def logged_steps(log: Path) -> int:
    return sum(1 for _ in log.open()) if log.exists() else 0


def slowed(cm: Any, factor: float) -> Any:
    """``cm`` with its engine ``factor`` times slower (step model, step overhead and
    sampling); the HTTP terms and the preemption curves are left as measured."""
    from scheduler.cost_model import CostModel

    prof = json.loads(json.dumps(cm.profile))
    for key in ("prefill", "decode", "chunk", "batch", "steps", "idle"):
        if prof.get(key):
            prof[key]["seconds"] = [t * factor for t in prof[key]["seconds"]]
    for key in ("step_s", "sampled_token_s"):
        prof["fixed"][key] = prof["fixed"].get(key, 0.0) * factor
    return CostModel(prof)
