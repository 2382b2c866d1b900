"""``lf.RateLimit``: at most ``rate`` starts of a step per period, per key, across every worker.

Checked at the worker before the step takes a slot (beside ``lf.Concurrency``,
and before it, so a step waiting for its turn never holds a concurrency slot).
A step over its rate is not held in a worker or in RabbitMQ: its delivery is acked
and a timer in the timer index sends it again at its reserved turn
(``eventlog/rates.py`` says why the turn is reserved, and ``scheduler/timers.py``
sends it). A limit made with ``RateLimit.named`` and given to several steps is one
budget for all of them (one downstream API).
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ledgerflow.eventlog.delays import delay_seconds
from ledgerflow.eventlog.errors import ConfigurationError, InvalidArgumentError

from .concurrency import call_key

MAX_BURST = 100_000


@dataclass(frozen=True)
class RateLimit:
    """``@lf.step(rate_limit=lf.RateLimit(10, per=timedelta(seconds=1), key="tenant"))``.

    ``rate`` starts per ``per`` (a timedelta or seconds, default 1 s) for each key;
    ``burst`` may start at once after a quiet spell (default 1: evenly spaced).
    ``key``: an argument's name, a function of the arguments, or None.
    """

    rate: float
    per: dt.timedelta | float = 1.0
    key: str | Callable[..., Any] | None = None
    burst: int = 1
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
            raise ConfigurationError(f"RateLimit.rate must be a number, not {self.rate!r}")
        try:
            per = delay_seconds(self.per, "RateLimit.per")
        except InvalidArgumentError as exc:
            raise ConfigurationError(str(exc)) from None
        if not (self.rate > 0 and per > 0) or self.interval_ms < 1e-3:
            raise ConfigurationError("RateLimit needs a rate and a period above 0 (at most 1/µs)")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int):
            raise ConfigurationError(f"RateLimit.burst must be an integer, not {self.burst!r}")
        if not 1 <= self.burst <= MAX_BURST:
            raise ConfigurationError(f"RateLimit.burst must be 1-{MAX_BURST}, not {self.burst}")
        if self.key is not None and not isinstance(self.key, str) and not callable(self.key):
            raise ConfigurationError("RateLimit.key must be an argument name or a function")
        if self.name is not None and not (isinstance(self.name, str) and 0 < len(self.name) <= 200):
            raise ConfigurationError("RateLimit.name must be a name of 1-200 characters")

    @classmethod
    def named(
        cls,
        name: str,
        rate: float,
        per: dt.timedelta | float = 1.0,
        *,
        key: str | Callable[..., Any] | None = None,
        burst: int = 1,
    ) -> RateLimit:
        """One budget shared by every step given it: ``RateLimit.named("payments-api", 10)``."""
        return cls(rate, per, key, burst, name)

    @property
    def interval_ms(self) -> float:
        per = self.per.total_seconds() if isinstance(self.per, dt.timedelta) else float(self.per)
        return per * 1000.0 / float(self.rate)

    def bound_to(self, step_name: str, signature: inspect.Signature | None) -> RateLimit:
        """This limit as a step declares it: named (its own unless shared), its key checked."""
        if (
            isinstance(self.key, str)
            and signature is not None
            and self.key not in signature.parameters
        ):
            raise ConfigurationError(
                f"step {step_name}: RateLimit key {self.key!r} is not one of its parameters"
            )
        return replace(self, name=self.name or f"step:{step_name}")

    def key_of(
        self, signature: inspect.Signature | None, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> str:
        return call_key(self.key, signature, args, kwargs, f"rate limit {self.name!r}")
