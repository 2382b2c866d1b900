"""When a failed step runs again, and when it gives up.

Exponential backoff with jitter by default; ``RetryableError(retry_after=...)``
sets the next delay exactly; ``FatalError`` and the policy's ``non_retryable``
types are never retried. The delay is never spent in RabbitMQ: the worker
records step_retrying with a due time, and the timer index wakes it.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

from ledgerflow.eventlog.delays import MAX_DELAY_S, delay_seconds
from ledgerflow.eventlog.errors import ConfigurationError, FatalError, RetryableError
from ledgerflow.eventlog.integrity import MAX_ATTEMPT


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be an integer of at least 1, not {attempts!r}"
            )
        if attempts > MAX_ATTEMPT:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be at most {MAX_ATTEMPT}")
        for name in ("initial", "max_interval"):
            value = getattr(self, name)
            if not _real(value) or not 0 <= value <= MAX_DELAY_S:
                raise ConfigurationError(
                    f"RetryPolicy.{name} must be a number of seconds from 0 to "
                    f"{MAX_DELAY_S:.0f} (100 years), not {value!r}"
                )
        if not _real(self.backoff) or self.backoff < 1:
            raise ConfigurationError(
                f"RetryPolicy.backoff must be a finite number of at least 1, not {self.backoff!r}"
            )
        if not _real(self.jitter) or not 0 <= self.jitter <= 1:
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
        """Seconds to wait before attempt ``attempt + 1``.

        A ``retry_after`` that cannot be honoured (NaN, infinite, over 100 years, not
        a number) raises InvalidArgumentError: the caller records the attempt as
        failed, saying so, rather than a retry that would never come.
        """
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return delay_seconds(exc.retry_after, "RetryableError.retry_after")
        try:
            base = min(self.max_interval, self.initial * self.backoff ** (attempt - 1))
        except OverflowError:  # backoff ** thousands of attempts: long past max_interval
            base = self.max_interval
        if self.jitter:
            spread = base * self.jitter
            base += (rng or random).uniform(-spread, spread)
        return max(0.0, min(self.max_interval, base))


def _real(value: object) -> bool:
    """A finite real number (a bool is not one here)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
