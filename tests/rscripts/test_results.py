"""The result schema: what a script may write to $WFE_RESULT, and the errors for the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wfe.rscripts import Product, ResultError, ScriptResult, check_result, load_result

SHA = "ab" * 32
PRODUCT = {"path": "out.dat", "type": "science", "size": 5, "sha256": SHA}


def test_empty_object_is_a_result() -> None:
    """{} is valid: no results, no metrics, no products."""
    assert check_result({}, script="noop") == ScriptResult()
    assert ScriptResult().as_dict() == {"results": {}, "metrics": {}, "products": []}


def test_full_result_round_trips() -> None:
    """Every key is checked and comes back unchanged from as_dict()."""
    data = {
        "results": {"anything": [1, {"goes": None}]},
        "metrics": {"rows": 3, "rate": 1.5},
        "products": [PRODUCT, {**PRODUCT, "type": "plot", "metadata": {"band": "r"}}],
    }
    result = load_result(json.dumps(data).encode(), script="x")
    assert result.products[1] == Product(
        path="out.dat", type="plot", size=5, sha256=SHA, metadata={"band": "r"}
    )
    assert result.as_dict() == {
        **data,
        "products": [{**PRODUCT, "metadata": {}}, data["products"][1]],
    }  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "x: result must be a JSON object, got array"),
        (
            {"product": []},
            "x: result has unknown key 'product' (known: metrics, products, results)",
        ),
        ({"results": 3}, "x: result $.results must be an object, got number"),
        ({"metrics": {"a": "1"}}, "x: result $.metrics.a must be a finite number"),
        ({"metrics": {"a": True}}, "x: result $.metrics.a must be a finite number"),
        ({"products": {}}, "x: result $.products must be an array, got object"),
        ({"products": ["a"]}, "x: result $.products[0] must be an object, got string"),
        (
            {"products": [{**PRODUCT, "sha256": "AB" * 32}]},
            "x: result $.products[0].sha256 must be 64 lowercase hex digits",
        ),
        (
            {"products": [PRODUCT, {**PRODUCT, "type": "data"}]},
            "x: result $.products[1].type must be one of science, qa, plot, log",
        ),
        (
            {"products": [{**PRODUCT, "size": -1}]},
            "x: result $.products[0].size must be a non-negative integer",
        ),
        (
            {"products": [{**PRODUCT, "size": 1.0}]},
            "x: result $.products[0].size must be a non-negative integer",
        ),
        (
            {"products": [{**PRODUCT, "path": ""}]},
            "x: result $.products[0].path must be a non-empty string",
        ),
        (
            {"products": [{**PRODUCT, "metadata": []}]},
            "x: result $.products[0].metadata must be an object, got array",
        ),
        (
            {"products": [{**PRODUCT, "checksum": 1}]},
            "x: result $.products[0] has unknown key 'checksum'",
        ),
        ({"products": [{"path": "a"}]}, "x: result $.products[0] lacks 'sha256'"),
    ],
)
def test_error_messages(data: Any, message: str) -> None:
    """Each schema violation gets one line naming the script and the JSON path."""
    with pytest.raises(ResultError) as info:
        check_result(data, script="x")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("raw", [b"", b"{", b"NaN", b'{"metrics": {"a": Infinity}}', b"\xff"])
def test_not_json(raw: bytes) -> None:
    """Text that is not strict JSON is refused with one line."""
    with pytest.raises(ResultError, match="^x: result is not JSON: "):
        load_result(raw, script="x")
