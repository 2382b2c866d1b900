"""lf.Concurrency and lf.RateLimit as declared: bad declarations fail at import, clearly."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any

import pytest

import ledgerflow as lf


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: lf.Concurrency(0), "limit must be 1-"),
        (lambda: lf.Concurrency(True), "must be an integer"),
        (lambda: lf.Concurrency(2, key=3), "argument name or a function"),  # type: ignore[arg-type]
        (lambda: lf.Concurrency(2, name=""), "1-200 characters"),
        (lambda: lf.RateLimit(0), "rate and a period above 0"),
        (lambda: lf.RateLimit(10, per=float("inf")), "cannot be honoured"),
        (lambda: lf.RateLimit(10, burst=0), "burst must be 1-"),
        (lambda: lf.RateLimit("10"), "must be a number"),  # type: ignore[arg-type]
    ],
)
def test_bad_limits_are_configuration_errors(make: Any, match: str) -> None:
    with pytest.raises(lf.ConfigurationError, match=match):
        make()


def test_a_key_must_name_a_parameter_of_the_step() -> None:
    with pytest.raises(lf.ConfigurationError, match="'tenant' is not one of its parameters"):

        @lf.step(concurrency=lf.Concurrency(2, key="tenant"))
        async def no_tenant(customer: str) -> None: ...

    with pytest.raises(lf.ConfigurationError, match="'region' is not one of its parameters"):

        @lf.step(rate_limit=lf.RateLimit(5, key="region"))
        async def no_region(customer: str) -> None: ...


def test_keys_come_from_arguments_defaults_or_a_function_and_are_bounded() -> None:
    def fn(tenant: str, n: int = 4) -> None: ...

    sig = inspect.signature(fn)
    by_name = lf.Concurrency(2, key="n").bound_to("fn", sig)
    assert by_name.key_of(sig, ["t"], {}) == "4"
    assert by_name.key_of(sig, ["t"], {"n": 9}) == "9"
    by_fn = lf.Concurrency(2, key=lambda tenant, n=0: tenant.upper()).bound_to("fn", sig)
    assert by_fn.key_of(sig, ["acme"], {}) == "ACME"
    assert lf.Concurrency(2).bound_to("fn", sig).key_of(sig, ["x"], {}) == ""
    with pytest.raises(lf.InvalidArgumentError, match="over 256 characters"):
        lf.Concurrency(2, key="tenant").bound_to("fn", sig).key_of(sig, ["x" * 300], {})


def test_a_named_rate_limit_is_one_budget_and_intervals_follow_rate_and_period() -> None:
    shared = lf.RateLimit.named("payments-api", 10, per=dt.timedelta(seconds=2), burst=3)
    assert shared.bound_to("a", None).name == shared.bound_to("b", None).name == "payments-api"
    assert shared.interval_ms == 200.0
    assert lf.RateLimit(4).bound_to("charge", None).name == "step:charge"
    assert lf.Concurrency(1).bound_to("charge", None).name == "charge"
