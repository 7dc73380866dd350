"""The knobs of one server process; the CLI fills them from its options (input limits: schemas.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 16  # requests per forward pass; 1 turns micro-batching off
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    queue_size: int = 256  # generate requests waiting for a batch; beyond it: 503 + Retry-After
    cache_users: int = 10_000  # users whose history and row stay in memory (LRU)
    max_pending_jobs: int = 16  # refresh jobs queued or running; beyond it: 503 + Retry-After
    max_body_bytes: int = 4 * 1024 * 1024  # any request body larger than this: 413
    retry_after_s: int = 1
    # A refresh job that has not moved for this long is taken for dead (its server crashed) and failed, at
    # startup or when its user asks for a new refresh. A running fit reports progress every 0.5 s.
    stale_job_s: float = 600.0
    # The key that opens /metrics' cross-tenant figures (user counts); None: they are never shown.
    metrics_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "max_pending_jobs", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.cache_users < 0:
            raise ValueError("max_wait_ms and cache_users must be >= 0")
        if self.metrics_key is not None and len(self.metrics_key) < 16:
            raise ValueError("the metrics key must be at least 16 characters (e.g. `openssl rand -hex 32`)")
