"""Evaluate a parsed :mod:`leadpilot.expressions` condition on one lead and one event, in Python, with SQL NULLs."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from leadpilot.expressions import Expression

_CMP = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


def evaluate(expression: Expression, names: Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    """Whether the condition holds; an unknown (NULL) result counts as false, as in SQL WHERE."""
    return _Evaluator(names, payload).visit(expression.tree) is True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None if value is None else float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


class _Evaluator:
    """Walks the (already validated) tree; None stands for SQL NULL throughout."""

    def __init__(self, names: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        self.names = names
        self.payload = payload

    def visit(self, node: ast.expr) -> Any:
        if isinstance(node, ast.BoolOp):
            values = [self.truth(self.visit(v)) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in values else (None if None in values else True)
            return True if True in values else (None if None in values else False)
        if isinstance(node, ast.UnaryOp):
            value = self.visit(node.operand)
            if isinstance(node.op, ast.Not):
                truth = self.truth(value)
                return None if truth is None else not truth
            number = _number(value)
            return None if number is None else -number
        if isinstance(node, ast.BinOp):
            left, right = _number(self.visit(node.left)), _number(self.visit(node.right))
            if left is None or right is None:
                return None
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            return None if right == 0 else left / right
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            return self.payload.get(node.attr)
        if isinstance(node, ast.Subscript):
            assert isinstance(node.slice, ast.Constant)
            return self.payload.get(str(node.slice.value))
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        raise ValueError(f"unsupported construct {type(node).__name__}")  # pragma: no cover (parse refuses it)

    @staticmethod
    def truth(value: Any) -> bool | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        number = _number(value)
        return bool(value) if number is None else number != 0

    def compare(self, node: ast.Compare) -> bool | None:
        result: bool | None = True
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            left = self.visit(left_node)
            if isinstance(op, ast.In | ast.NotIn):
                assert isinstance(right_node, ast.List | ast.Tuple)
                values = [e.value for e in right_node.elts if isinstance(e, ast.Constant)]
                if left is None:
                    part: bool | None = None
                else:
                    numeric = values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
                    probe = _number(left) if numeric else left
                    part = probe in values
                    if isinstance(op, ast.NotIn):
                        part = not part
            else:
                right = self.visit(right_node)
                if isinstance(right_node, ast.Constant) and right_node.value is None:
                    part = (left is None) == isinstance(op, ast.Eq)
                elif left is None or right is None:
                    part = None
                else:
                    if isinstance(left, int | float) or isinstance(right, int | float):
                        left, right = _number(left), _number(right)
                        if left is None or right is None:
                            part = None
                            result = _and(result, part)
                            left_node = right_node
                            continue
                    try:
                        part = bool(_CMP[type(op)](left, right))
                    except TypeError:
                        part = None
            result = _and(result, part)
            left_node = right_node
        return result

    def call(self, node: ast.Call) -> Any:
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        args = [self.visit(a) for a in node.args]
        if name == "coalesce":
            return next((a for a in args if a is not None), None)
        if args[0] is None:
            return None
        if name == "abs":
            number = _number(args[0])
            return None if number is None else abs(number)
        text = str(args[0])
        if name == "lower":
            return text.lower()
        other = None if args[1] is None else str(args[1])
        if other is None:
            return None
        if name == "contains":
            return other in text
        if name == "startswith":
            return text.startswith(other)
        return text.endswith(other)


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True
