"""Connection settings, read from the environment once, overridable by arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .names import DEFAULT_NAMESPACE

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE

    @classmethod
    def from_env(
        cls,
        amqp_url: str | None = None,
        redis_url: str | None = None,
        namespace: str | None = None,
    ) -> Settings:
        return cls(
            amqp_url=amqp_url or os.environ.get("LEDGERFLOW_AMQP_URL", DEFAULT_AMQP_URL),
            redis_url=redis_url or os.environ.get("LEDGERFLOW_REDIS_URL", DEFAULT_REDIS_URL),
            namespace=namespace or os.environ.get("LEDGERFLOW_NAMESPACE", DEFAULT_NAMESPACE),
        )
