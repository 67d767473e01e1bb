"""The worker's configuration: one class per layer, every default written once.

``CoreConfig`` is what ``WorkerCore`` needs (the scheduler around the engine);
``WorkerConfig`` adds the engine to build and the process loop, and is what the API
process sends its worker child (msgpack bytes). The API's ``ServerOptions`` embeds a
``WorkerConfig`` rather than repeating its fields, and ``stream2llm serve`` reads its
flags' defaults from these classes, so changing a default here changes it everywhere.
"""

from __future__ import annotations

import msgspec

# New tokens per scheduler step when serving (prefill chunk + decode tokens). This
# explicitly overrides scheduler.core.Scheduler's own default (2048, the size the
# simulator's experiments use): a serving step on the reference engine stays short,
# so a final chunk never waits behind a long prefill step.
SERVING_TOKEN_BUDGET = 512


class CoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The scheduler that ``WorkerCore`` runs around its engine."""

    policy: str = "fcfs"  # scheduler.policies name (`stream2llm serve --scheduler`)
    preemption: str = "cost"  # cost | recompute | swap
    cost_model: str | None = None  # profile NAME or FILE (None: cpu-reference)
    token_budget: int = SERVING_TOKEN_BUDGET
    max_batch: int | None = None
    host_capacity_tokens: int | None = None  # swap space (None: 4x the KV pool)


class WorkerConfig(CoreConfig, frozen=True, kw_only=True):
    """Everything the worker process needs; passed to the child as msgpack bytes."""

    model_path: str | None = None
    device: str = "cpu"
    max_total_tokens: int = 16384  # KV pool size in tokens
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    # CPUs the worker process (the engine and torch's threads) may run on; () = any.
    # On a CPU-only box this gives the engine cores of its own, as a GPU would be,
    # so HTTP and tokenization do not slow its steps (docs/performance.md).
    cpus: tuple[int, ...] = ()
    poll_ms: int = 50
    stuck_wait_ms: int = 5
    in_addr: str = ""  # the worker PULLs requests from here (the server binds it)
    out_addr: str = ""  # the worker PUSHes replies/events here (the server binds it)
