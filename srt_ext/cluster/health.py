"""The cluster's ``/health`` and ``/v1/stats``: the router and each replica, asked directly.

Why not the router's ``/workers`` alone: it marks a replica unhealthy only after
``--health-failure-threshold`` failed checks, it cannot be asked when the router
itself is down, and streams do not go through it; an operator wants "which
replica is down, now".
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from srt_ext.cluster.gateway import ReplicaState


async def _status(http: httpx.AsyncClient, url: str) -> str:
    """``ok`` (SGLang's /health 200), ``busy`` (it answers 503: starting or draining),
    ``down`` (it does not answer)."""
    try:
        r = await http.get(url + "/health", timeout=3.0)
    except httpx.HTTPError:
        return "down"
    return "ok" if r.status_code == 200 else "busy"


async def cluster_health(http: httpx.AsyncClient, router_url: str, replicas: list[ReplicaState],
                         draining: bool = False) -> tuple[dict[str, Any], int]:  # fmt: skip
    """``ok`` (router and every replica up), ``degraded`` (200, still serving: some
    replica down, or the router down, so streams work and one-shots do not),
    ``unavailable`` (no replica: 503), ``draining`` (503)."""
    router, *states = await asyncio.gather(_status(http, router_url),
                                           *(_status(http, r.url) for r in replicas))  # fmt: skip
    per = {r.name: {"url": r.url, "status": s, "open_streams": r.open, "epoch": r.epoch}
           for r, s in zip(replicas, states, strict=True)}  # fmt: skip
    n_up = sum(s == "ok" for s in states)
    if draining:
        status = "draining"
    elif n_up == 0:
        status = "unavailable"
    else:
        status = "ok" if n_up == len(replicas) and router == "ok" else "degraded"
    body = {"status": status, "router": router, "replicas": per,
            "replicas_up": n_up, "replicas_total": len(replicas)}  # fmt: skip
    return body, 200 if status in ("ok", "degraded") else 503


async def cluster_stats(http: httpx.AsyncClient, replicas: list[ReplicaState],
                        headers: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """The sum of the replicas' numeric ``/v1/stats`` fields (a single server's shape,
    so clients that read ``streams_open`` work unchanged) plus ``replicas``: each
    replica's own answer by name (None: unreachable)."""

    async def one(url: str) -> dict[str, Any] | None:
        try:
            r = await http.get(url + "/v1/stats", headers=headers, timeout=30.0)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    answers = await asyncio.gather(*(one(r.url) for r in replicas))
    per = {r.name: a for r, a in zip(replicas, answers, strict=True)}
    total: dict[str, Any] = {}
    for s in per.values():
        for k, v in (s or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return {**total, "replicas": per}
