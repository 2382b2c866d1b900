"""Connection settings, read from the environment once, overridable by arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigurationError, InvalidArgumentError
from .names import DEFAULT_NAMESPACE
from .retention import parse_retention

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    # The namespace's default retention (ms) for finished runs whose workflow declares
    # none; None keeps them. Applied by the janitor (in the reconciler) only.
    retention_ms: int | None = None
    # What an append waits for before it counts as recorded (eventlog/durability.py):
    # none, replica[:N] or aof[:N].
    redis_durability: str = "none"

    @classmethod
    def from_env(
        cls,
        amqp_url: str | None = None,
        redis_url: str | None = None,
        namespace: str | None = None,
        retention_ms: int | None = None,
        *,
        read_retention: bool = True,
        redis_durability: str | None = None,
    ) -> Settings:
        """``read_retention=False`` leaves ``LEDGERFLOW_RETENTION`` unread (and unchecked)."""
        if retention_ms is None and read_retention:
            retention_ms = env_retention()
        return cls(
            amqp_url=amqp_url or os.environ.get("LEDGERFLOW_AMQP_URL", DEFAULT_AMQP_URL),
            redis_url=redis_url or os.environ.get("LEDGERFLOW_REDIS_URL", DEFAULT_REDIS_URL),
            namespace=namespace or os.environ.get("LEDGERFLOW_NAMESPACE", DEFAULT_NAMESPACE),
            retention_ms=retention_ms,
            redis_durability=redis_durability
            or os.environ.get("LEDGERFLOW_REDIS_DURABILITY", "").strip()
            or "none",
        )


def env_retention() -> int | None:
    """``LEDGERFLOW_RETENTION`` (e.g. 7d, 12h, 30m) in ms; unset or empty: none."""
    text = os.environ.get("LEDGERFLOW_RETENTION", "").strip()
    if not text:
        return None
    try:
        return parse_retention(text, "LEDGERFLOW_RETENTION")
    except InvalidArgumentError as exc:
        raise ConfigurationError(str(exc)) from None
