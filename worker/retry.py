"""When a failed step runs again, and when it gives up.

Exponential backoff with jitter by default; ``RetryableError(retry_after=...)``
sets the next delay exactly; ``FatalError`` and the policy's ``non_retryable``
types are never retried. The delay is never spent in RabbitMQ: the worker
records step_retrying with a due time, and the timer index wakes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from eventlog.errors import ConfigurationError, FatalError, RetryableError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.initial < 0 or self.max_interval < 0:
            raise ConfigurationError("RetryPolicy delays must not be negative")
        if self.backoff < 1:
            raise ConfigurationError("RetryPolicy.backoff must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy.jitter is a fraction between 0 and 1")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), which raised ``exc``, gets another."""
        if attempt >= self.max_attempts:
            return False
        if isinstance(exc, FatalError):
            return False
        if isinstance(exc, RetryableError):
            return True
        return not isinstance(exc, self.non_retryable)

    def delay(self, exc: BaseException, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return max(0.0, float(exc.retry_after))
        base = min(self.max_interval, self.initial * self.backoff ** (attempt - 1))
        if self.jitter:
            spread = base * self.jitter
            base += (rng or random).uniform(-spread, spread)
        return max(0.0, min(self.max_interval, base))


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
