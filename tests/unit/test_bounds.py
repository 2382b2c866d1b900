"""Every identifier and delay has one rule, checked where it comes in (issue 11, items 2, 6).

Run ids, hook tokens, delays, retry policies and step limits: a value outside
the rule is a clear error naming what is allowed, raised before anything is
written or sent.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math

import pytest
from ledgerflow.eventlog import codec
from ledgerflow.eventlog.delays import MAX_DELAY_MS, MAX_DELAY_S, delay_ms, delay_seconds
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    InvalidArgumentError,
    MalformedMessageError,
)
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.integrity import Wire, check_batch
from ledgerflow.eventlog.names import check_hook_token, check_run_id
from ledgerflow.eventlog.timers import Timer, TimerKind
from ledgerflow.scheduler.replay import child_run_id
from ledgerflow.worker.outcome import failure_event
from ledgerflow.worker.retry import RetryPolicy

import ledgerflow as lf

# --- run ids and hook tokens -------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id", ["0f3c9a2b", "order-42", "parent.s3", "tenant:7.s1", "A_b-c.d:e", "x" * 200]
)
def test_run_ids_within_the_rule(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id", ["a|b", "a{b", "b}", "a b", "", "x" * 201, "tab\t", "nl\n", "é", "a/b", 42, None]
)
def test_run_ids_outside_the_rule_say_what_is_allowed(run_id: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_run_id(run_id)
    assert isinstance(info.value, ValueError) and isinstance(info.value, lf.LedgerflowError)
    assert "1-200 characters, letters, digits, '_', '.', '-' and ':'" in str(info.value)


@pytest.mark.parametrize("token", ["approve-42", "a{b}~!#$", "t" * 256, "x"])
def test_hook_tokens_within_the_rule(token: str) -> None:
    assert check_hook_token(token) == token


@pytest.mark.parametrize("token", ["a|b", "a b", "", "t" * 257, "tab\t", "é", "nl\n", 7])
def test_hook_tokens_outside_the_rule_say_what_is_allowed(token: object) -> None:
    with pytest.raises(InvalidArgumentError, match="printable ASCII without spaces or '\\|'"):
        check_hook_token(token)


def test_a_hostile_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_run_id("|" * 100_000)
    assert len(str(info.value)) < 300
    assert "100000 characters" in str(info.value)


def test_child_run_ids_stay_within_the_rule() -> None:
    assert child_run_id("order-42", "s3") == "order-42.s3"
    parent = "p" * 199
    child = child_run_id(parent, "s12")
    assert check_run_id(child) == child
    assert child == child_run_id(parent, "s12")  # deterministic
    assert child != child_run_id("q" * 199, "s12")
    grandchild = child_run_id(child, "s1")
    assert check_run_id(grandchild) == grandchild


# --- timer entries -----------------------------------------------------------------------


def test_timer_entries_round_trip() -> None:
    timer = Timer(TimerKind.HEARTBEAT, "run.s3", "s1", 2, 30_000)
    assert Timer.parse(timer.member) == timer


@pytest.mark.parametrize(
    "member",
    [
        "wait|a|b|c|0|0",
        "wait|run|s1|0",
        "sleep|run|s1|0|0",
        "wait|r{1}|s1|0|0",
        "wait|run|s1|-1|0",
        "wait|run|s1|+1|0",
        "wait|run|s1|0|1e3",
        "wait|run||0|0",
        "wait|run|s1|0|0\n",
        "wait|run|s1|٣|0",  # a digit, but not an ASCII one
    ],
)
def test_malformed_timer_entries_are_named(member: str) -> None:
    with pytest.raises(MalformedMessageError, match="malformed timer entry"):
        Timer.parse(member)


# --- delays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (2.5, 2.5),
        (-3, 0.0),
        (dt.timedelta(hours=1), 3600.0),
        (dt.timedelta(seconds=-1), 0.0),
        (decimal.Decimal("1.5"), 1.5),
        (MAX_DELAY_S, MAX_DELAY_S),
    ],
)
def test_delays_within_the_bound(value: object, seconds: float) -> None:
    assert delay_seconds(value, "a delay") == seconds


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        1e300,
        10**400,
        MAX_DELAY_S * 1.0001,
        dt.timedelta.max,
        decimal.Decimal("NaN"),
        decimal.Decimal("sNaN"),
        decimal.Decimal("Infinity"),
    ],
)
def test_delays_that_cannot_be_honoured(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"cannot be honoured.*100 years"):
        delay_seconds(value, "lf.sleep() delay")


@pytest.mark.parametrize("value", [True, "5", None, [1], 1j])
def test_delays_that_are_not_numbers(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="must be a number of seconds or a timedelta"):
        delay_seconds(value, "lf.sleep() delay")


def test_delay_ms_never_passes_the_bound() -> None:
    assert delay_ms(MAX_DELAY_S, "x") == MAX_DELAY_MS
    assert delay_ms(0.0015, "x") == 1


# --- retry policies and step limits ------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("initial", math.nan),
        ("initial", math.inf),
        ("initial", -1.0),
        ("initial", MAX_DELAY_S * 2),
        ("max_interval", math.nan),
        ("max_interval", math.inf),
        ("backoff", math.nan),
        ("backoff", math.inf),
        ("backoff", 0.5),
        ("jitter", math.nan),
        ("jitter", 2.0),
        ("max_attempts", 0),
        ("max_attempts", True),
        ("max_attempts", 2.5),
        ("max_attempts", 2**31),
        ("initial", "1"),
    ],
)
def test_retry_policies_with_numbers_out_of_range_are_configuration_errors(
    option: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=f"RetryPolicy.{option}"):
        RetryPolicy(**{option: value})  # type: ignore[arg-type]


def test_a_policy_with_many_attempts_never_overflows() -> None:
    policy = RetryPolicy(max_attempts=100_000, initial=1.0, backoff=10.0, max_interval=30.0)
    assert policy.delay(RuntimeError(), 5_000) <= 30.0


@pytest.mark.parametrize("value", [math.inf, 1e300, math.nan, -math.inf, "soon"])
def test_a_retry_after_that_cannot_be_honoured_fails_the_step_with_the_reason(
    value: object,
) -> None:
    exc = lf.RetryableError("rate limited", retry_after=value)  # type: ignore[arg-type]
    event = failure_event("run-1", "s1", 1, exc, RetryPolicy(max_attempts=5))
    assert event.type is EventType.STEP_FAILED
    assert event.timer is None
    error = codec.decode(event.payload)["error"]
    assert error["type"] == "ledgerflow.InvalidArgumentError"
    assert "RetryableError.retry_after" in error["message"]
    assert "failed, not retried" in error["message"]
    assert "rate limited" in error["message"]


def test_a_retry_after_within_the_bound_is_kept_exactly() -> None:
    exc = lf.RetryableError("later", retry_after=dt.timedelta(days=3).total_seconds())
    event = failure_event("run-1", "s1", 1, exc, RetryPolicy(max_attempts=5))
    assert event.type is EventType.STEP_RETRYING
    assert event.delay_ms == 3 * 86_400_000


@pytest.mark.parametrize("limit", ["timeout", "heartbeat_timeout"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 1e300, 0, -1])
def test_step_limits_out_of_range_are_configuration_errors(limit: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=limit):

        @lf.step(name=f"unit_bounds_{limit}_{value}", **{limit: value})  # type: ignore[arg-type]
        async def never(x: int) -> int:
            return x


# --- the append's first pass in Python (the memory store's) --------------------------------


def test_check_batch_names_the_event_and_the_field() -> None:
    good = Wire("wait_created", "w1", "", "", "wait|r|w1|0|0", "5")
    bad = Wire("wait_created", "w2", "", "", "wait|r|w2|0|0", "+99999999999999")
    check_batch("r", [good])
    with pytest.raises(lf.LedgerflowError) as info:
        check_batch("r", [good, bad])
    assert "event 2 (wait_created), field 'due'" in str(info.value)
