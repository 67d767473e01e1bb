"""The cluster's ``/health`` and ``/v1/stats``: the router and each replica, asked directly.

Why not the router's ``/workers`` alone: it marks a replica unhealthy only after
``--health-failure-threshold`` failed checks, and it cannot be asked when the
router itself is down; an operator wants "which replica is down, now".
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


async def _probe(http: httpx.AsyncClient, url: str, path: str) -> bool:
    try:
        r = await http.get(url + path, timeout=3.0)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


async def cluster_health(http: httpx.AsyncClient, router_url: str, replica_urls: list[str],
                         draining: bool = False) -> tuple[dict[str, Any], int]:  # fmt: skip
    """``ok`` (router and every replica up), ``degraded`` (router and some replicas
    up: 200, still serving), ``unavailable`` (router down or no replica: 503),
    ``draining`` (503)."""
    checks = [_probe(http, router_url, "/health")]
    checks += [_probe(http, u, "/livez") for u in replica_urls]
    router_ok, *up = await asyncio.gather(*checks)
    replicas = {u: ("ok" if ok else "down") for u, ok in zip(replica_urls, up, strict=True)}
    n_up = sum(up)
    if draining:
        status = "draining"
    elif not router_ok or (replica_urls and n_up == 0):
        status = "unavailable"
    else:
        status = "ok" if n_up == len(replica_urls) else "degraded"
    body = {"status": status, "router": "ok" if router_ok else "down", "replicas": replicas,
            "replicas_up": n_up, "replicas_total": len(replica_urls)}  # fmt: skip
    return body, 200 if status in ("ok", "degraded") else 503


async def cluster_stats(http: httpx.AsyncClient, replica_urls: list[str],
                        headers: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """The sum of the replicas' numeric ``/v1/stats`` fields (a single server's shape,
    so clients that read ``streams_open`` work unchanged) plus ``replicas``: each
    replica's own answer (None: unreachable)."""

    async def one(url: str) -> dict[str, Any] | None:
        try:
            r = await http.get(url + "/v1/stats", headers=headers, timeout=10.0)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    per = dict(zip(replica_urls, await asyncio.gather(*(one(u) for u in replica_urls)), strict=True))
    total: dict[str, Any] = {}
    for s in per.values():
        for k, v in (s or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return {**total, "replicas": per}
