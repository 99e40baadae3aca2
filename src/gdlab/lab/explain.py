"""The backward pass made visible: local and global gradients of an expression, node by node.

The lecture's picture of backpropagation: every node of the computation knows its *local* gradient (how its output
moves with each of its inputs), and the *global* gradient (how the final output moves with the node) arrives from
the output, multiplied by the local gradients along the way (the chain rule). :func:`explain` parses an expression
with a safe parser (Python's ``ast`` read node by node: numbers, variables, ``+ - * / **``, unary minus,
parentheses and a whitelist of functions; nothing is ever evaluated as code), computes every node's value, local
and global gradients, and checks the leaves' global gradients against ``torch.autograd``.

Example:
    >>> graph = explain("x*y + sin(x)", {"x": 1.0, "y": 2.0})
    >>> round(graph.output.value, 6), {k: round(v, 6) for k, v in graph.gradients.items()}
    (2.841471, {'x': 2.540302, 'y': 1.0})
"""

from __future__ import annotations

import ast
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gdlab.errors import InvalidParameter, check_number, shorten

__all__ = ["explain", "Graph", "Node", "FUNCTIONS", "MAX_CHARS", "MAX_DEPTH", "MAX_DRAWN", "MAX_NODES", "parse_values"]

MAX_CHARS = 4000
"""The longest expression read."""
MAX_NODES = 1000
"""The most nodes a graph may have (its table has a row per node)."""
MAX_DEPTH = 300
"""The deepest nesting read: a sum of 300 terms, or 300 functions applied one in another."""
MAX_DRAWN = 40
"""The most nodes drawn: a larger graph's picture is unreadable (its table and ``--json`` have every node)."""

# name -> (value, derivative, torch function)
FUNCTIONS: dict[str, tuple[Callable[[float], float], Callable[[float], float], Callable[[Any], Any]]] = {
    "sin": (math.sin, math.cos, torch.sin),
    "cos": (math.cos, lambda x: -math.sin(x), torch.cos),
    "tan": (math.tan, lambda x: 1 / math.cos(x) ** 2, torch.tan),
    "exp": (math.exp, math.exp, torch.exp),
    "log": (math.log, lambda x: 1 / x, torch.log),
    "sqrt": (math.sqrt, lambda x: 0.5 / math.sqrt(x), torch.sqrt),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2, torch.tanh),
    "sigmoid": (lambda x: 1 / (1 + math.exp(-x)), lambda x: math.exp(-x) / (1 + math.exp(-x)) ** 2, torch.sigmoid),
    "relu": (lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0, torch.relu),
    "abs": (abs, lambda x: 1.0 if x > 0 else -1.0 if x < 0 else 0.0, torch.abs),
}

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


@dataclass
class Node:
    """One node: ``label`` (``x``, ``3``, ``*``, ``sin``...), its ``inputs`` (node indices), ``value``, the local
    gradient with respect to each input, and the global gradient d output / d node."""

    index: int
    label: str
    kind: str  # "variable", "constant", "operation", "function"
    inputs: list[int]
    value: float
    local: list[float] = field(default_factory=list)
    grad: float = 0.0
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.index, "label": self.label, "kind": self.kind, "expression": self.text,
                "inputs": self.inputs, "value": self.value, "local_gradients": self.local, "global_gradient": self.grad}


@dataclass
class Graph:
    """The expression's nodes in evaluation order (inputs before the nodes using them); the last is the output."""

    expression: str
    nodes: list[Node]
    values: dict[str, float]
    gradients: dict[str, float]  # d output / d variable
    autograd: dict[str, float]  # the same by torch.autograd

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"expression": self.expression, "at": self.values, "value": self.output.value,
                "gradients": self.gradients, "autograd": self.autograd, "nodes": [n.to_dict() for n in self.nodes]}

    @property
    def too_large_to_draw(self) -> str | None:
        """Why the graph is not drawn (more than :data:`MAX_DRAWN` nodes), or None."""
        if len(self.nodes) <= MAX_DRAWN:
            return None
        return (f"the graph has {len(self.nodes)} nodes, more than the {MAX_DRAWN} a readable picture holds: the table "
                "(or --json) lists every node")

    def plot(self, path: str | Path) -> Path:
        """Draw the graph to ``path``; a graph of more than :data:`MAX_DRAWN` nodes is refused (one line)."""
        from gdlab.plots import plot_graph

        if self.too_large_to_draw:
            raise InvalidParameter("expression", self.expression, f"at most {MAX_DRAWN} nodes to draw; "
                                   f"{self.too_large_to_draw}")
        return plot_graph(self, path)


def parse_values(text: str) -> dict[str, float]:
    """``"x=1,y=2"`` -> ``{"x": 1.0, "y": 2.0}``."""
    values: dict[str, float] = {}
    for item in text.split(","):
        name, sep, number = item.partition("=")
        try:
            if not sep or not name.strip().isidentifier():
                raise ValueError
            values[name.strip()] = float(number)
            if not math.isfinite(values[name.strip()]):
                raise ValueError
        except ValueError:
            raise InvalidParameter("--at", text, "name=value pairs of finite numbers, comma-separated, e.g. "
                                   "x=1,y=2") from None
    return values


def _where(expression: str, error: SyntaxError) -> str:
    """Where a syntax error is, in the expression as typed: its column (1-based, so a caret under that column of
    the expression sits under the character) and that character, or the end; a long expression's echo is cut, so
    the text just before is shown too.

    Example:
        >>> try:
        ...     ast.parse("x+*y", mode="eval")
        ... except SyntaxError as e:
        ...     print(_where("x+*y", e))
        column 3, '*'
    """
    lead = len(expression) - len(expression.lstrip())
    body = expression.strip()
    lines = (body + "\n").splitlines(keepends=True)
    before = sum(len(line) for line in lines[: max((error.lineno or 1) - 1, 0)])
    index = min(before + max((error.offset or 1) - 1, 0), len(body))  # in body; SyntaxError's offset is 1-based
    column = lead + index + 1
    context = f" after {'...' * (index > 20) + body[max(0, index - 20):index]!r}" if len(expression) > 40 else ""
    if index >= len(body):
        return f"column {column}, the end of the expression{context}"
    return f"column {column}, {body[index]!r}{context}"


def explain(expression: str, values: dict[str, float]) -> Graph:
    """Parse ``expression``, evaluate it at ``values`` and compute every node's local and global gradients.

    Expressions are capped: :data:`MAX_CHARS` characters, :data:`MAX_DEPTH` levels of nesting, :data:`MAX_NODES`
    nodes, numbers within the float range; a bad expression is echoed in its first 80 characters."""
    if len(expression) > MAX_CHARS:
        raise InvalidParameter("expression", expression, f"at most {MAX_CHARS} characters (it has "
                               f"{len(expression)})")
    try:
        tree = ast.parse(expression.strip() + "\n", mode="eval")  # the newline: an early end has a column too
    except SyntaxError as e:
        raise InvalidParameter("expression", expression, f"an arithmetic expression ({e.msg} at "
                               f"{_where(expression, e)})") from None
    except (RecursionError, MemoryError):
        raise InvalidParameter("expression", expression, f"at most {MAX_DEPTH} levels of nesting") from None
    _check_size(tree, expression)
    values = {name: check_number(value, name, expected="a finite number") for name, value in values.items()}
    nodes: list[Node] = []
    leaves: dict[str, int] = {}

    def build(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                       bool):
            value = _finite(node, expression)
            nodes.append(Node(len(nodes), f"{value:g}", "constant", [], value, text=f"{value:g}"))
            return len(nodes) - 1
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise InvalidParameter("expression", expression, f"{node.id} called with an argument, e.g. "
                                       f"{node.id}(x)")
            if node.id not in values:
                raise InvalidParameter("variable", node.id, f"a value for it in --at (given: "
                                       f"{', '.join(values) or 'none'})")
            if node.id not in leaves:  # a variable used twice is one node: its gradients add up
                nodes.append(Node(len(nodes), node.id, "variable", [], float(values[node.id]), text=node.id))
                leaves[node.id] = len(nodes) - 1
            return leaves[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            a = build(node.operand)
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            nodes.append(Node(len(nodes), "neg" if sign < 0 else "pos", "operation", [a], sign * nodes[a].value,
                              [sign], text=f"{'-' if sign < 0 else '+'}({nodes[a].text})"))
            return len(nodes) - 1
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = build(node.left), build(node.right)
            x, y = nodes[a].value, nodes[b].value
            op = _OPS[type(node.op)]
            value, local = _binary(op, x, y, expression)
            nodes.append(Node(len(nodes), op, "operation", [a, b], value, local,
                              text=f"({nodes[a].text} {op} {nodes[b].text})"))
            return len(nodes) - 1
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in FUNCTIONS:
                raise InvalidParameter("function", name, f"one of {', '.join(FUNCTIONS)}")
            if len(node.args) != 1 or node.keywords:
                raise InvalidParameter("expression", expression, f"{name} with one argument")
            a = build(node.args[0])
            f, df, _ = FUNCTIONS[name]
            x = nodes[a].value
            try:
                value, slope = f(x), df(x)
            except (ValueError, ZeroDivisionError, OverflowError):
                raise InvalidParameter("expression", expression, f"{name} defined at {x:g}") from None
            nodes.append(Node(len(nodes), name, "function", [a], value, [slope], text=f"{name}({nodes[a].text})"))
            return len(nodes) - 1
        raise InvalidParameter("expression", expression, "numbers, variables, + - * / **, unary minus, parentheses "
                               f"and the functions {', '.join(FUNCTIONS)} (found {type(node).__name__})")

    build(tree.body)
    unused = sorted(set(values) - set(leaves))
    # the backward pass: the output's global gradient is 1; each node passes its global gradient times the local
    # gradient to each of its inputs (in reverse evaluation order, every node is finished before its inputs)
    nodes[-1].grad = 1.0
    for n in reversed(nodes):
        for i, local in zip(n.inputs, n.local):
            nodes[i].grad += n.grad * local
    gradients = {name: nodes[i].grad for name, i in leaves.items()}
    gradients.update({name: 0.0 for name in unused})
    return Graph(expression, nodes, dict(values), gradients, _autograd(tree.body, values))


def _check_size(tree: ast.AST, expression: str) -> None:
    """Refuse a tree nested deeper than :data:`MAX_DEPTH` or with more than :data:`MAX_NODES` nodes (read without
    recursion, so nothing deep overflows the stack)."""
    count, names = 0, set()
    stack: list[tuple[ast.AST, int]] = [(tree.body if isinstance(tree, ast.Expression) else tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidParameter("expression", expression, f"at most {MAX_DEPTH} levels of nesting (a sum of at "
                                   f"most {MAX_DEPTH} terms)")
        if isinstance(node, ast.Name):  # a variable used twice is one node
            names.add(node.id)
        elif not isinstance(node, (ast.expr_context, ast.operator, ast.unaryop)):
            count += 1
        if count + len(names) > MAX_NODES:
            raise InvalidParameter("expression", expression, f"at most {MAX_NODES} nodes in its graph")
        children = node.args if isinstance(node, ast.Call) else list(ast.iter_child_nodes(node))
        stack.extend((child, depth + 1) for child in children)


def _finite(node: ast.Constant, expression: str) -> float:
    """A constant of the expression (an int or a float) as a float, or one line when it is beyond the float range
    (a 400-digit integer, ``1e400``)."""
    number: int | float = node.value  # type: ignore[assignment]  # the caller checked its type
    try:
        value = float(number)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        text = ast.get_source_segment(expression.strip(), node) or repr(node.value)
        digits = sum(c.isdigit() for c in text)
        shown = f"a {digits}-digit integer" if isinstance(node.value, int) else shorten(text, 40)
        raise InvalidParameter("expression", expression, f"numbers within the float range (at most about "
                               f"{sys.float_info.max:.3g}; it has {shown})")
    return value


def _binary(op: str, x: float, y: float, expression: str) -> tuple[float, list[float]]:
    try:
        if op == "+":
            return x + y, [1.0, 1.0]
        if op == "-":
            return x - y, [1.0, -1.0]
        if op == "*":
            return x * y, [y, x]
        if op == "/":
            return x / y, [1 / y, -x / y**2]
        value = x**y
        if isinstance(value, complex):
            raise ValueError
        return value, [y * x ** (y - 1) if x != 0 or y >= 1 else math.nan, value * math.log(x) if x > 0 else 0.0]
    except (ZeroDivisionError, ValueError, OverflowError):
        raise InvalidParameter("expression", expression, f"{x:g} {op} {y:g} to be defined") from None


def _autograd(body: ast.AST, values: dict[str, float]) -> dict[str, float]:
    """The variables' gradients by torch.autograd, the same tree evaluated with torch (float64)."""
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}

    def run(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return torch.tensor(node.value, dtype=torch.float64)
        if isinstance(node, ast.Name):
            return leaves[node.id]
        if isinstance(node, ast.UnaryOp):
            return -run(node.operand) if isinstance(node.op, ast.USub) else run(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = run(node.left), run(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b, ast.Div: a / b}.get(type(node.op), None) \
                if not isinstance(node.op, ast.Pow) else a**b
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id][2](run(node.args[0]))

    out = run(body)
    grads = torch.autograd.grad(out, list(leaves.values()), allow_unused=True)
    return {k: float(g) if g is not None else 0.0 for k, g in zip(leaves, grads)}
