"""A small, safe expression language (Python syntax subset) compiled to SQL for the feature engines and rules.

An expression is parsed once with :mod:`ast`, checked against a whitelist of node kinds and known names, and
compiled to a SQL fragment for a dialect (DuckDB or Spark SQL).  Nothing is ever ``eval``-ed.

Grammar (Python syntax): ``and``/``or``/``not``; comparisons ``== != < <= > >=`` and ``in`` / ``not in`` a
list of constants; ``+ - * /``; string, number, boolean and ``None`` literals; names from the caller's
catalogue (``type``, ``actor_id``...), ``payload.<key>`` (or ``payload['<key>']`` for keys such as ``from``
that are Python keywords) for a key of the event's JSON payload, and the
functions ``contains(text, 'part')``, ``startswith(text, 'prefix')``, ``endswith(text, 'suffix')``,
``lower(text)``, ``abs(number)`` and ``coalesce(a, b, ...)``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Dialect = Literal["duckdb", "spark"]

_PAYLOAD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_COMPARE_SQL: dict[type[ast.cmpop], str] = {
    ast.Eq: "=",
    ast.NotEq: "<>",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_ARITH_SQL: dict[type[ast.operator], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
# name -> (argument count, or None for any >= 1; whether the result is numeric)
FUNCTIONS: dict[str, tuple[int | None, bool]] = {
    "contains": (2, False),
    "startswith": (2, False),
    "endswith": (2, False),
    "lower": (1, False),
    "abs": (1, True),
    "coalesce": (None, False),
}


class ExpressionError(ValueError):
    """An expression that does not parse, uses an unknown name or an unsupported construct."""

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"{reason} in expression {expression!r}")
        self.expression = expression
        self.reason = reason


@dataclass(frozen=True)
class Expression:
    """A parsed, validated expression: its text, its tree and the payload keys and names it reads."""

    text: str
    tree: ast.expr
    payload_keys: frozenset[str]
    names: frozenset[str]

    def to_sql(
        self, columns: Mapping[str, str], *, dialect: Dialect = "duckdb", payload_column: str = "payload"
    ) -> str:
        """This expression as SQL; ``columns`` maps each catalogue name to its SQL column."""
        return _SqlCompiler(self.text, columns, dialect, payload_column).visit(self.tree)


def parse(text: str, names: frozenset[str] | set[str], *, allow_payload: bool = True) -> Expression:
    """Parse and validate ``text``; ``names`` are the plain names it may use."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(str(text), "empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(text, f"syntax error at column {exc.offset}") from None
    payload_keys: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        _check_node(text, node, frozenset(names), allow_payload, payload_keys, used)
    return Expression(text.strip(), tree, frozenset(payload_keys), frozenset(used))


_ALLOWED = (
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.Compare,
    ast.BinOp,
    ast.Constant,
    ast.Name,
    ast.Attribute,
    ast.List,
    ast.Tuple,
    ast.Load,
    ast.In,
    ast.NotIn,
    ast.Call,
    ast.Subscript,
    *_COMPARE_SQL,
    *_ARITH_SQL,
)


def _check_node(
    text: str, node: ast.AST, names: frozenset[str], allow_payload: bool, payload_keys: set[str], used: set[str]
) -> None:
    if not isinstance(node, _ALLOWED):
        raise ExpressionError(text, f"unsupported construct {type(node).__name__}")
    if isinstance(node, ast.Constant) and not isinstance(node.value, str | int | float | bool | type(None)):
        raise ExpressionError(text, f"unsupported literal {node.value!r}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise ExpressionError(text, f"unknown function (known: {', '.join(sorted(FUNCTIONS))})")
        arity = FUNCTIONS[node.func.id][0]
        if node.keywords or (arity is not None and len(node.args) != arity) or not node.args:
            raise ExpressionError(text, f"{node.func.id}() takes {arity or 'one or more'} positional argument(s)")
        return
    if isinstance(node, ast.Name) and node.id in FUNCTIONS:
        return  # a called function's name (checked with its Call node)
    if isinstance(node, ast.Subscript):
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        if not (allow_payload and isinstance(node.value, ast.Name) and node.value.id == "payload"):
            raise ExpressionError(text, "only payload['<key>'] may be subscripted")
        if not isinstance(key, str) or not _PAYLOAD_KEY.match(key):
            raise ExpressionError(text, f"bad payload key {key!r}")
        payload_keys.add(key)
        return
    if isinstance(node, ast.Attribute):
        if not (allow_payload and isinstance(node.value, ast.Name) and node.value.id == "payload"):
            raise ExpressionError(text, "only payload.<key> attributes are allowed")
        if not _PAYLOAD_KEY.match(node.attr):
            raise ExpressionError(text, f"bad payload key {node.attr!r}")
        payload_keys.add(node.attr)
    elif isinstance(node, ast.Name) and node.id != "payload":
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ExpressionError(text, f"unknown name {node.id!r} (known: {known})")
        used.add(node.id)
    elif isinstance(node, ast.Name) and not allow_payload:
        raise ExpressionError(text, "unknown name 'payload'")
    elif isinstance(node, ast.Compare):
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn) and not (
                isinstance(right, ast.List | ast.Tuple) and all(isinstance(e, ast.Constant) for e in right.elts)
            ):
                raise ExpressionError(text, "'in' needs a list of constants on its right")
    elif isinstance(node, ast.List | ast.Tuple) and not all(isinstance(e, ast.Constant) for e in node.elts):
        raise ExpressionError(text, "lists may hold constants only")


def _is_numeric_context(node: ast.expr) -> bool:
    """Whether a comparison partner or operand makes a payload value numeric."""
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool)


class _SqlCompiler:
    def __init__(self, text: str, columns: Mapping[str, str], dialect: Dialect, payload_column: str) -> None:
        self.text = text
        self.columns = columns
        self.dialect = dialect
        self.payload_column = payload_column

    def payload(self, key: str, numeric: bool) -> str:
        path = f"'$.{key}'"
        raw = (
            f"json_extract_string({self.payload_column}, {path})"
            if self.dialect == "duckdb"
            else f"get_json_object({self.payload_column}, {path})"
        )
        return f"TRY_CAST({raw} AS DOUBLE)" if numeric else raw

    def visit(self, node: ast.expr, numeric: bool = False) -> str:
        if isinstance(node, ast.BoolOp):
            joiner = " AND " if isinstance(node.op, ast.And) else " OR "
            return "(" + joiner.join(self.visit(v) for v in node.values) + ")"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"(NOT {self.visit(node.operand)})"
            return f"(-{self.visit(node.operand, numeric=True)})"
        if isinstance(node, ast.BinOp):
            op = _ARITH_SQL[type(node.op)]
            left, right = self.visit(node.left, numeric=True), self.visit(node.right, numeric=True)
            if isinstance(node.op, ast.Div):
                return f"(CAST({left} AS DOUBLE) / NULLIF({right}, 0))"
            return f"({left} {op} {right})"
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Constant):
            return _literal(node.value, self.dialect)
        if isinstance(node, ast.Attribute):
            return self.payload(node.attr, numeric)
        if isinstance(node, ast.Subscript):
            assert isinstance(node.slice, ast.Constant)
            return self.payload(str(node.slice.value), numeric)
        if isinstance(node, ast.Name):
            return self.columns[node.id]
        raise ExpressionError(self.text, f"unsupported construct {type(node).__name__}")  # pragma: no cover

    def call(self, node: ast.Call) -> str:
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        numeric = FUNCTIONS[name][1]
        args = [self.visit(a, numeric=numeric) for a in node.args]
        if name == "contains":
            text_type = "STRING" if self.dialect == "spark" else "VARCHAR"
            return f"(instr(CAST({args[0]} AS {text_type}), {args[1]}) > 0)"
        if name in ("startswith", "endswith"):
            fn = {"duckdb": {"startswith": "starts_with", "endswith": "ends_with"}, "spark": {}}[self.dialect]
            return f"{fn.get(name, name)}({args[0]}, {args[1]})"
        return f"{name}({', '.join(args)})"

    def compare(self, node: ast.Compare) -> str:
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                assert isinstance(right, ast.List | ast.Tuple)
                values = [e.value for e in right.elts if isinstance(e, ast.Constant)]
                numeric = bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
                items = ", ".join(_literal(v, self.dialect) for v in values) or "NULL"
                keyword = "IN" if isinstance(op, ast.In) else "NOT IN"
                parts.append(f"({self.visit(left, numeric=numeric)} {keyword} ({items}))")
            else:
                numeric = _is_numeric_context(left) or _is_numeric_context(right)
                numeric = numeric or isinstance(left, ast.BinOp) or isinstance(right, ast.BinOp)
                lhs, rhs = self.visit(left, numeric=numeric), self.visit(right, numeric=numeric)
                if isinstance(right, ast.Constant) and right.value is None:
                    parts.append(f"({lhs} IS {'NOT ' if isinstance(op, ast.NotEq) else ''}NULL)")
                else:
                    parts.append(f"({lhs} {_COMPARE_SQL[type(op)]} {rhs})")
            left = right
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _literal(value: object, dialect: Dialect = "duckdb") -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if dialect == "spark":
        # Spark SQL reads backslash escapes in string literals and joins adjacent literals ('a''b' is 'ab').
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + str(value).replace("'", "''") + "'"


def to_pandas(expression: Expression, frame: Any, columns: Mapping[str, str], payload_prefix: str = "payload.") -> Any:
    """Evaluate on a DataFrame, vectorised, with SQL's NULL logic (nullable dtypes; Kleene and/or/not).

    ``columns`` maps catalogue names to frame columns; ``payload.<key>`` reads column ``payload_prefix + key``
    (missing columns are all-null).
    """
    return _PandasEvaluator(expression.text, frame, columns, payload_prefix).visit(expression.tree)


class _PandasEvaluator:
    def __init__(self, text: str, frame: Any, columns: Mapping[str, str], prefix: str) -> None:
        import pandas as pd

        self.pd = pd
        self.text = text
        self.frame = frame
        self.columns = columns
        self.prefix = prefix

    def series(self, column: str, numeric: bool) -> Any:
        pd = self.pd
        raw = self.frame[column] if column in self.frame else pd.Series(pd.NA, index=self.frame.index, dtype=object)
        if numeric:
            return pd.to_numeric(raw, errors="coerce").astype("Float64")
        if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
            return raw.astype("Float64")
        return raw.astype("string")

    def constant(self, value: object) -> Any:
        if isinstance(value, bool):
            return self.pd.Series(value, index=self.frame.index, dtype="boolean")
        return value

    def visit(self, node: ast.expr, numeric: bool = False) -> Any:
        if isinstance(node, ast.BoolOp):
            values = [self.boolean(self.visit(v)) for v in node.values]
            out = values[0]
            for v in values[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return ~self.boolean(self.visit(node.operand))
            return -self.visit(node.operand, numeric=True)
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left, numeric=True), self.visit(node.right, numeric=True)
            if isinstance(node.op, ast.Div):
                right = right.mask(right == 0) if hasattr(right, "mask") else (self.pd.NA if right == 0 else right)
                return left / right
            return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Constant):
            return self.constant(node.value)
        if isinstance(node, ast.Attribute):
            return self.series(self.prefix + node.attr, numeric)
        if isinstance(node, ast.Subscript):
            assert isinstance(node.slice, ast.Constant)
            return self.series(self.prefix + str(node.slice.value), numeric)
        if isinstance(node, ast.Name):
            return self.series(self.columns[node.id], numeric)
        raise ExpressionError(self.text, f"unsupported construct {type(node).__name__}")  # pragma: no cover

    def boolean(self, value: Any) -> Any:
        pd = self.pd
        if isinstance(value, pd.Series):
            if pd.api.types.is_bool_dtype(value.dtype):
                return value.astype("boolean")
            return (value.astype("Float64") != 0).astype("boolean")
        return pd.Series(bool(value), index=self.frame.index, dtype="boolean")

    def call(self, node: ast.Call) -> Any:
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        args = [self.visit(a, numeric=FUNCTIONS[name][1]) for a in node.args]
        if name == "contains":
            return args[0].astype("string").str.contains(str(args[1]), regex=False)
        if name == "startswith":
            return args[0].astype("string").str.startswith(str(args[1]))
        if name == "endswith":
            return args[0].astype("string").str.endswith(str(args[1]))
        if name == "lower":
            return args[0].astype("string").str.lower()
        if name == "abs":
            return args[0].abs()
        out = args[0]
        for other in args[1:]:
            out = out.fillna(other) if hasattr(out, "fillna") else out
        return out

    def compare(self, node: ast.Compare) -> Any:
        pd = self.pd
        result = None
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                assert isinstance(right, ast.List | ast.Tuple)
                values = [e.value for e in right.elts if isinstance(e, ast.Constant)]
                numeric = bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
                lhs = self.visit(left, numeric=numeric)
                part = lhs.isin(values).astype("boolean").mask(lhs.isna())
                if isinstance(op, ast.NotIn):
                    part = ~part
            else:
                numeric = _is_numeric_context(left) or _is_numeric_context(right)
                numeric = numeric or isinstance(left, ast.BinOp) or isinstance(right, ast.BinOp)
                lhs, rhs = self.visit(left, numeric=numeric), self.visit(right, numeric=numeric)
                if isinstance(right, ast.Constant) and right.value is None:
                    part = lhs.isna() if isinstance(op, ast.Eq) else lhs.notna()
                    part = part.astype("boolean")
                else:
                    fn = {
                        ast.Eq: lambda a, b: a == b,
                        ast.NotEq: lambda a, b: a != b,
                        ast.Lt: lambda a, b: a < b,
                        ast.LtE: lambda a, b: a <= b,
                        ast.Gt: lambda a, b: a > b,
                        ast.GtE: lambda a, b: a >= b,
                    }[type(op)]
                    part = pd.Series(fn(lhs, rhs), index=self.frame.index).astype("boolean")
            result = part if result is None else (result & part)
            left = right
        return result
