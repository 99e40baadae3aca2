"""explain: the chain rule node by node, checked against torch.autograd; a parser that never evaluates code."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gdlab.cli import app
from gdlab.errors import InvalidParameter
from gdlab.lab.explain import explain, parse_values


@pytest.mark.parametrize(("expression", "at"), [
    ("x*y + sin(x)", {"x": 1.0, "y": 2.0}),
    ("(x - 3)**2 / y - exp(-x*x)", {"x": 0.5, "y": 4.0}),
    ("sigmoid(w*x + b)", {"w": -1.5, "x": 2.0, "b": 0.3}),
    ("log(1 + exp(x)) * tanh(y) - sqrt(x*x + y*y)", {"x": 0.7, "y": -1.2}),
    ("x**3 - 3*x*y**2", {"x": 1.1, "y": 0.4}),
    ("relu(x) + abs(y) + cos(x*y) / 2", {"x": 0.9, "y": -2.0}),
])
def test_gradients_match_autograd(expression: str, at: dict[str, float]) -> None:
    graph = explain(expression, at)
    for name, value in graph.gradients.items():
        assert value == pytest.approx(graph.autograd[name], rel=1e-12, abs=1e-12)


def test_local_and_global_gradients_of_each_node() -> None:
    graph = explain("x*y + sin(x)", {"x": 1.0, "y": 2.0})
    by_text = {n.text: n for n in graph.nodes}
    product, sine = by_text["(x * y)"], by_text["sin(x)"]
    assert product.local == [2.0, 1.0] and sine.local == [pytest.approx(math.cos(1.0))]
    assert graph.output.grad == 1.0 and product.grad == 1.0
    assert by_text["x"].grad == pytest.approx(2.0 + math.cos(1.0))  # two paths add up
    assert graph.output.value == pytest.approx(2.0 + math.sin(1.0))


@pytest.mark.parametrize(("expression", "at", "message"), [
    ("x*", {"x": 1.0}, "invalid expression 'x*'"),
    ("foo(x)", {"x": 1.0}, "invalid function 'foo'"),
    ("x + z", {"x": 1.0}, "invalid variable 'z'"),
    ("__import__('os').system('true')", {"x": 1.0}, "invalid expression"),
    ("x.real", {"x": 1.0}, "found Attribute"),
    ("(lambda: 1)()", {"x": 1.0}, "invalid expression"),
    ("log(x)", {"x": -1.0}, "log defined at -1"),
    ("x / y", {"x": 1.0, "y": 0.0}, "1 / 0 to be defined"),
    ("sin", {"x": 1.0}, "sin called with an argument"),
    ("1" * 400 + " * x", {"x": 1.0}, "expected numbers within the float range (at most about 1.8e+308; it has a "
     "400-digit integer)"),
    ("-" + "9" * 309, {"x": 1.0}, "it has a 309-digit integer"),
    ("1e400 * x", {"x": 1.0}, "it has 1e400)"),
    ("x + 1", {"x": math.inf}, "invalid x inf: expected a finite number"),
    ("x + 1", {"x": math.nan}, "invalid x nan"),
])
def test_bad_expressions_are_refused(expression: str, at: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidParameter, match=re.escape(message)):
        explain(expression, at)


@pytest.mark.parametrize(("expression", "column", "at"), [
    ("x**2+", 6, "the end of the expression"),
    ("  x**2+  ", 8, "the end of the expression"),  # columns of the expression as typed, spaces and all
    ("x+*y", 3, "*"),
    ("x ** $", 6, "$"),
    ("sin(x", 4, "("),
    ("x)", 2, ")"),
    ("  x+*y", 5, "*"),
    ("exp(x) + sin(y) * cos(x - y) + log(x * y) ++ * 3", 46, "*"),
])
def test_a_syntax_error_names_its_real_column(expression: str, column: int, at: str) -> None:
    """Issue 28: a caret under the column the one-line error names sits under the character it names (or just after
    the expression, where it ends too soon)."""
    with pytest.raises(InvalidParameter) as raised:
        explain(expression, {"x": 1.0, "y": 2.0})
    text = str(raised.value)
    found = re.search(r"at column (\d+), (the end of the expression|'(.)')", text)
    assert found is not None and "\n" not in text, text
    assert int(found.group(1)) == column and (found.group(3) or found.group(2)) == at
    if found.group(3):
        assert expression[column - 1] == at
    else:
        assert expression[: column - 1].strip() == expression.strip()
    if len(expression) > 40:  # the echo is cut: the text before the column is named
        assert f"after '...{expression[column - 21:column - 1]}'" in text


def test_parse_values() -> None:
    assert parse_values("x=1, y=-2.5") == {"x": 1.0, "y": -2.5}
    for bad in ("x", "x=", "1=2", "x=a", "x=1e400", "x=nan", "x=-inf"):
        with pytest.raises(InvalidParameter, match="invalid --at"):
            parse_values(bad)


def test_explain_command(tmp_path: Path) -> None:
    runner = CliRunner()
    png = tmp_path / "graph.png"
    result = runner.invoke(app, ["explain", "x*y + sin(x)", "--at", "x=1,y=2", "--out", str(png), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["gradients"]["y"] == 1.0 and len(payload["nodes"]) == 5 and png.stat().st_size > 5_000
    shown = runner.invoke(app, ["explain", "x*y + sin(x)", "--at", "x=1,y=2", "--out", str(png)])
    assert "torch.autograd agrees" in shown.stdout
    for args, message in ((["explain", "x*", "--at", "x=1"], "invalid expression"),
                          (["explain", "x+y", "--at", "x=1"], "invalid variable 'y'"),
                          (["explain", "x", "--at", "x"], "invalid --at 'x'")):
        bad = runner.invoke(app, [*args, "--out", str(png)])
        assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_explain_out_keeps_a_file_of_another_kind_unless_forced(tmp_path: Path) -> None:
    runner = CliRunner()
    notes = tmp_path / "notes.png"
    notes.write_text("the user's notes")
    refused = runner.invoke(app, ["explain", "x*y", "--at", "x=1,y=2", "--out", str(notes)])
    assert refused.exit_code == 2 and "pass --force to write over it" in refused.stderr
    assert notes.read_text() == "the user's notes"
    forced = runner.invoke(app, ["explain", "x*y", "--at", "x=1,y=2", "--out", str(notes), "--force"])
    assert forced.exit_code == 0, forced.output
    assert notes.read_bytes()[:4] == b"\x89PNG"
