"""Tools described from their steps, the model's arguments checked, results rendered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from typing import Annotated, Any, Literal

import pytest
from ledgerflow.worker.registry import StepFunction

import ledgerflow as lf
from ledgerflow.ai import tool
from ledgerflow.ai.tools import Tool


@lf.resource
async def unit_ai_pool() -> Any:
    yield "pool"


@lf.step(name="unit_ai_refund")
async def refund(
    order_id: str,
    amount_cents: int,
    reason: Literal["damaged", "late", "other"] = "other",
    note: str | None = None,
    pool: Any = lf.use(unit_ai_pool),
) -> str:
    """Refund (part of) an order to the customer's card.

    Only for delivered orders.

    Args:
        order_id: The order to refund,
            as the customer wrote it.
        amount_cents (int): How much, in cents.

    Returns:
        The refund's id.
    """
    return f"{order_id}:{amount_cents}:{reason}"


@lf.step(name="unit_ai_sphinx")
async def sphinx(
    tags: list[str], weights: dict[str, float], ratio: Annotated[float, "between 0 and 1"]
) -> None:
    """Tag things.

    :param tags: The tags to set.
    :param weights: A weight per tag.
    """


def test_the_schema_comes_from_the_signature_and_the_docstring() -> None:
    described = tool(refund)
    assert described.name == "refund"
    assert described.description == (
        "Refund (part of) an order to the customer's card. Only for delivered orders."
    )
    assert described.parameters == {
        "type": "object",
        "properties": {
            "order_id": {
                "type": "string",
                "description": "The order to refund, as the customer wrote it.",
            },
            "amount_cents": {"type": "integer", "description": "How much, in cents."},
            "reason": {"enum": ["damaged", "late", "other"]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["order_id", "amount_cents"],
        "additionalProperties": False,
    }  # the resource parameter (lf.use) is the worker's, never the model's


def test_sphinx_docstrings_containers_and_annotated_descriptions() -> None:
    described = tool(sphinx, name="tag-things", description="Set tags.")
    assert described.name == "tag-things" and described.description == "Set tags."
    assert described.parameters["properties"] == {
        "tags": {"type": "array", "items": {"type": "string"}, "description": "The tags to set."},
        "weights": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "A weight per tag.",
        },
        "ratio": {"type": "number", "description": "between 0 and 1"},
    }


@dataclasses.dataclass
class Box:
    size: int


def test_types_a_model_cannot_send_are_refused_at_import_naming_the_parameter() -> None:
    @lf.step(name="unit_ai_boxed")
    async def boxed(box: Box) -> None:
        """Take a box."""

    @lf.step(name="unit_ai_either")
    async def either(value: int | str) -> None:
        """Either."""

    @lf.step(name="unit_ai_intkeys")
    async def intkeys(value: dict[int, str]) -> None:
        """Int keys."""

    @lf.step(name="unit_ai_undocumented")
    async def undocumented(value: int) -> None:
        pass

    @lf.step(name="unit_ai_variadic")
    async def variadic(*values: int) -> None:
        """Many."""

    cases: list[tuple[StepFunction[..., Any], str]] = [
        (boxed, "parameter 'box': type .*Box cannot be described"),
        (either, "only `T | None` unions"),
        (intkeys, "keys must be str"),
        (undocumented, "no description"),
        (variadic, "cannot be passed by name"),
    ]
    for step, problem in cases:
        with pytest.raises(lf.ConfigurationError, match=problem):
            tool(step)
    with pytest.raises(lf.ConfigurationError, match="1-64 letters"):
        tool(refund, name="refund money")
    with pytest.raises(lf.ConfigurationError, match="a tool is a step"):
        tool(lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"order_id": "A-1"}, "missing argument(s) amount_cents"),
        ({"order_id": "A-1", "amount_cents": 5, "pool": 1}, "unknown argument(s) pool"),
        ({"order_id": 7, "amount_cents": 5}, "order_id = 7 is not a string"),
        ({"order_id": "A-1", "amount_cents": True}, "amount_cents = true is not an integer"),
        ({"order_id": "A-1", "amount_cents": 2.5}, "amount_cents = 2.5 is not an integer"),
        ({"order_id": "A-1", "amount_cents": 1, "reason": "bored"}, 'not one of ["damaged"'),
        ({"order_id": "A-1", "amount_cents": 1, "note": 3}, "note = 3 is not a string or null"),
    ],
)
def test_arguments_that_do_not_fit_are_answered_with_the_problem(
    arguments: dict[str, Any], problem: str
) -> None:
    checked, found = tool(refund).check_arguments(arguments)
    assert checked == {}
    assert found is not None and problem in found
    if "argument(s)" in problem:  # the model is told the whole signature to try again
        assert found.endswith(
            "refund takes (order_id: a string, amount_cents: an integer, reason?: one of "
            '["damaged", "late", "other"], note?: a string or null)'
        )


def test_arguments_that_fit_are_passed_on_with_whole_floats_as_integers() -> None:
    checked, problem = tool(refund).check_arguments(
        {"order_id": "A-1", "amount_cents": 500.0, "note": None}
    )
    assert problem is None
    assert checked == {"order_id": "A-1", "amount_cents": 500, "note": None}
    assert type(checked["amount_cents"]) is int
    checked, problem = tool(sphinx).check_arguments(
        {"tags": ["a"], "weights": {"a": 1}, "ratio": 0}
    )
    assert problem is None and checked["weights"] == {"a": 1}
    _, problem = tool(sphinx).check_arguments({"tags": ["a", 2], "weights": {}, "ratio": 0})
    assert problem is not None and "a list of a string" in problem


@dataclasses.dataclass
class Refunded:
    id: str
    amount: decimal.Decimal
    at: dt.datetime
    tags: frozenset[str]


def test_results_are_rendered_as_text_json_or_bounded() -> None:
    described: Tool = tool(refund, max_result_chars=200)
    assert described.render("plain text") == "plain text"
    value = Refunded("rf_1", decimal.Decimal("1.50"), dt.datetime(2026, 1, 2), frozenset("ba"))
    assert described.render({"refund": value, "n": (1, 2)}) == (
        '{"refund": {"id": "rf_1", "amount": "1.50", "at": "2026-01-02T00:00:00", '
        '"tags": ["a", "b"]}, "n": [1, 2]}'
    )
    long = described.render("x" * 10_000)
    assert len(long) <= 200 and "characters cut" in long
    with pytest.raises(lf.ConfigurationError, match="at least 100"):
        tool(refund, max_result_chars=10)
