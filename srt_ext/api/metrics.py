"""Prometheus metrics of one server (its own registry, so several servers in
one process, as in the tests, never collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("stream2llm_requests", "Requests accepted", ["kind"], registry=r)
        self.finished = Counter("stream2llm_finished", "Requests finished", ["reason"], registry=r)
        self.output_tokens = Counter("stream2llm_output_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("stream2llm_ttft_seconds", "Final chunk to first token",
                              buckets=_LAT, registry=r)  # fmt: skip
        self.chunk_latency = Histogram("stream2llm_chunk_post_seconds",
                                       "Chunk POST handling latency", buckets=_LAT, registry=r)  # fmt: skip
        self.reaped = Counter("stream2llm_reaped", "Streams aborted by the server (idle, unread, "
                              "disconnect, shutdown)", ["reason"], registry=r)  # fmt: skip
        self.rejected = Counter("stream2llm_rejected", "Requests refused (4xx) by status",
                                ["status"], registry=r)  # fmt: skip
        self.worker_restarts = Counter("stream2llm_worker_restarts", "Worker processes restarted",
                                       registry=r)  # fmt: skip
        self.kv = Gauge("stream2llm_kv_tokens", "KV cache tokens", ["state"], registry=r)
        self.streams = Gauge("stream2llm_streams_open", "Live streams", registry=r)
        self.preemptions = Gauge("stream2llm_preemptions", "Preemptions so far", ["kind"],
                                 registry=r)  # fmt: skip
        self.invalidated = Gauge("stream2llm_tokens_invalidated",
                                 "KV tokens invalidated by updates", registry=r)  # fmt: skip

    def update_kv(self, stats: dict[str, Any]) -> None:
        """Refresh the gauges from a worker stats reply (done on every scrape)."""
        for state in ("capacity", "used", "pinned", "evictable", "free", "host"):
            self.kv.labels(state).set(stats.get(f"kv_{state}_tokens", 0))
        self.streams.set(stats.get("streams_open", 0))
        for kind, n in dict(stats.get("preemptions", {})).items():
            self.preemptions.labels(kind).set(n)
        self.invalidated.set(stats.get("tokens_invalidated", 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
