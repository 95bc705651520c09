"""Workflow rules as data: the model, YAML load / validate / export, and the static cycle check.

A rule file is YAML with a top-level ``rules:`` list; each rule::

    - name: escalate-no-follow-up          # letters, digits, '.', '_', '-'
      description: No follow-up within 24 h after a call: tell the supervisor.
      enabled: false
      trigger: call_completed              # an event type, a list of them, or {event: ..., from_rules: [...]}
      condition: "stage in ['assigned', 'contacted']"   # optional; lead fields and payload.<key>
      after: 24h                           # optional delay from the trigger event (s, m, h, d; 1h30m)
      at: payload.due_at                   # optional deadline read from the event (``after`` then offsets it)
      unless: [call_attempt, call_completed, message, meeting]   # skip if one of these happens in between
      actions:
        - notify: {to: supervisor, message: "Lead {lead_id} ({title}) had no follow-up in 24 h"}
        - create_task: {assignee: supervisor, title: "Follow up lead {lead_id}", due_in: 4h}

Every problem is reported with the rule's name and the bad part (``rule 'x': after: ...``).
"""

from __future__ import annotations

import ast
import difflib
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from typing import Any

import yaml

from leadpilot.crm.errors import Invalid
from leadpilot.crm.events import EventType
from leadpilot.crm.models import Stage, TaskKind
from leadpilot.expressions import Expression, ExpressionError, parse

# Event types written by other subsystems (scoring) that rules may also react to.
EXTRA_EVENT_TYPES = frozenset({"score_changed", "priority_changed", "review_requested", "review_decided"})
KNOWN_EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType) | EXTRA_EVENT_TYPES
# Types the engine itself writes about firings: a rule may trigger on them only for named rules (from_rules).
WORKFLOW_EVENT_TYPES = frozenset(
    {EventType.WORKFLOW_FIRED.value, EventType.WORKFLOW_FAILED.value, EventType.WORKFLOW_STOPPED.value}
)
# Names a condition may read: the lead's fields (now) and the trigger event's own fields.
LEAD_FIELDS = (
    "stage",
    "score",
    "score_transfer",
    "score_convert",
    "priority",
    "budget",
    "product_line",
    "source",
    "region",
    "owner_id",
    "team_id",
    "account_id",
    "title",
    "has_owner",
)
EVENT_FIELDS = ("type", "actor_id", "lead_id")
CONDITION_NAMES = frozenset(LEAD_FIELDS + EVENT_FIELDS)
TEMPLATE_FIELDS = frozenset({"lead_id", "title", "stage", "owner_id", "rule", "event_type", "score"})
RECIPIENTS = ("owner", "supervisor")
PRIORITIES = ("high", "medium", "low")
# What each action writes to the event log (what may trigger other rules).
ACTION_EMITS: dict[str, frozenset[str]] = {
    "assign": frozenset({EventType.ASSIGN.value, EventType.STAGE_CHANGE.value}),
    "create_task": frozenset({EventType.TASK_CREATED.value}),
    "notify": frozenset({EventType.NOTIFICATION.value}),
    "change_stage": frozenset({EventType.STAGE_CHANGE.value}),
    "webhook": frozenset({EventType.WEBHOOK_DELIVERED.value, EventType.WEBHOOK_FAILED.value}),
    "enqueue_call": frozenset({EventType.CALL_ENQUEUED.value, EventType.TASK_CREATED.value}),
}
ACTIONS = tuple(ACTION_EMITS)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,120}$")
_DELAY = re.compile(r"^(-)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_RULE_KEYS = frozenset(
    {"name", "description", "enabled", "trigger", "condition", "after", "at", "unless", "unless_same", "actions"}
)


class WorkflowError(Invalid):
    """Rules that do not validate; ``problems`` lists every one, each naming the rule and the bad part."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems), field="rules")
        self.problems = list(problems)


def parse_delay(text: Any, *, allow_negative: bool = False) -> timedelta:
    """``30s``, ``15m``, ``24h``, ``2d``, ``1h30m`` (``-1h`` with allow_negative) as a timedelta."""
    match = _DELAY.match(str(text).strip()) if isinstance(text, str | int) and not isinstance(text, bool) else None
    if match is None or not any(match.groups()[1:]) or (match.group(1) and not allow_negative):
        sign = "[-]" if allow_negative else ""
        raise ValueError(f"bad delay {text!r} (use e.g. {sign}30m, 24h, 2d, 1h30m)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups()[1:])
    delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    return -delta if match.group(1) else delta


def format_delay(delta: timedelta) -> str:
    """The inverse of :func:`parse_delay`."""
    total = int(delta.total_seconds())
    sign, total = ("-", -total) if total < 0 else ("", total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return sign + ("".join(parts) or "0s")


@dataclass(frozen=True)
class Action:
    """One thing a rule does: its kind and its (validated) parameters."""

    kind: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """A validated workflow rule."""

    name: str
    triggers: tuple[str, ...]
    actions: tuple[Action, ...]
    description: str = ""
    enabled: bool = False
    from_rules: tuple[str, ...] = ()
    condition: Expression | None = None
    after: timedelta | None = None
    at: str | None = None  # payload key holding a deadline
    unless: tuple[str, ...] = ()
    unless_same: str | None = None  # an unless event counts only with the trigger's value of this payload key

    @property
    def delayed(self) -> bool:
        """Whether the rule waits (a delay or a deadline) rather than firing on the event."""
        return self.after is not None or self.at is not None

    def emits(self) -> frozenset[str]:
        """Event types firing this rule may write."""
        out: set[str] = {EventType.WORKFLOW_FIRED.value, EventType.WORKFLOW_FAILED.value}
        for action in self.actions:
            out |= ACTION_EMITS[action.kind]
        return frozenset(out)

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain data (what is stored and exported); parse_rule(to_dict()) gives it back."""
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["enabled"] = self.enabled
        if self.from_rules:
            data["trigger"] = {"event": list(self.triggers), "from_rules": list(self.from_rules)}
        else:
            data["trigger"] = self.triggers[0] if len(self.triggers) == 1 else list(self.triggers)
        if self.condition is not None:
            data["condition"] = self.condition.text
        if self.after is not None:
            data["after"] = format_delay(self.after)
        if self.at is not None:
            data["at"] = f"payload.{self.at}"
        if self.unless:
            data["unless"] = list(self.unless)
        if self.unless_same:
            data["unless_same"] = self.unless_same
        data["actions"] = [{a.kind: dict(a.params)} for a in self.actions]
        return data


def _event_type_problem(value: Any) -> str | None:
    if not isinstance(value, str) or value not in KNOWN_EVENT_TYPES:
        close = difflib.get_close_matches(str(value), sorted(KNOWN_EVENT_TYPES), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown event type {value!r}{hint}"
    return None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


@dataclass
class _Checker:
    """Collects the problems of one rule, each prefixed with the rule's name and the part."""

    name: str
    problems: list[str] = field(default_factory=list)

    def add(self, part: str, why: str) -> None:
        self.problems.append(f"rule {self.name!r}: {part}: {why}")


def _template(check: _Checker, part: str, value: Any, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        check.add(part, "needs a non-empty text")
        return None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        check.add(part, f"bad template ({exc})")
        return None
    unknown = sorted(fields - TEMPLATE_FIELDS)
    if unknown:
        check.add(part, f"unknown placeholder {{{unknown[0]}}} (known: {', '.join(sorted(TEMPLATE_FIELDS))})")
        return None
    return value


def _recipient(check: _Checker, part: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        check.add(part, f"needs {' or '.join(RECIPIENTS)} or a username")
        return None
    return value.strip()


def _check_keys(check: _Checker, part: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(params) - allowed)
    if extra:
        check.add(part, f"unknown option {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _parse_action(check: _Checker, index: int, raw: Any) -> Action | None:
    part = f"actions[{index}]"
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, Mapping) or len(raw) != 1:
        check.add(part, f"an action is one of {', '.join(ACTIONS)} with its options, e.g. {{notify: {{to: owner}}}}")
        return None
    kind, params = next(iter(raw.items()))
    if kind not in ACTION_EMITS:
        close = difflib.get_close_matches(str(kind), ACTIONS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        check.add(part, f"unknown action {kind!r} (known: {', '.join(ACTIONS)}){hint}")
        return None
    part = f"{part} {kind}"
    params = dict(params or {}) if isinstance(params, Mapping) or params is None else None
    if params is None:
        check.add(part, "options must be a mapping")
        return None
    before = len(check.problems)
    out: dict[str, Any] = {}
    if kind == "assign":
        _check_keys(check, part, params, {"user", "team", "reason"})
        if ("user" in params) == ("team" in params):
            check.add(part, "give exactly one of user: <username> or team: <team name>")
        for key in ("user", "team", "reason"):
            if key in params:
                if not isinstance(params[key], str) or not params[key].strip():
                    check.add(f"{part}.{key}", "needs a non-empty text")
                else:
                    out[key] = params[key].strip()
    elif kind in ("create_task", "enqueue_call"):
        allowed = (
            {"title", "assignee", "kind", "due_in"} if kind == "create_task" else {"title", "assignee", "priority"}
        )
        _check_keys(check, part, params, allowed)
        out["assignee"] = _recipient(check, f"{part}.assignee", params.get("assignee", "owner"))
        default_title = "Follow up lead {lead_id}" if kind == "create_task" else "Call lead {lead_id}"
        out["title"] = _template(check, f"{part}.title", params.get("title", default_title))
        if kind == "create_task":
            task_kind = params.get("kind", TaskKind.FOLLOW_UP.value)
            if task_kind not in {k.value for k in TaskKind}:
                check.add(
                    f"{part}.kind", f"unknown task kind {task_kind!r} (known: {', '.join(k.value for k in TaskKind)})"
                )
            out["kind"] = task_kind
            if "due_in" in params:
                try:
                    parse_delay(params["due_in"])
                    out["due_in"] = str(params["due_in"])
                except ValueError as exc:
                    check.add(f"{part}.due_in", str(exc))
        else:
            priority = params.get("priority", "medium")
            if priority not in PRIORITIES:
                check.add(f"{part}.priority", f"must be one of {', '.join(PRIORITIES)}, not {priority!r}")
            out["priority"] = priority
    elif kind == "notify":
        _check_keys(check, part, params, {"to", "message"})
        recipients = [_recipient(check, f"{part}.to", r) for r in _as_list(params.get("to", "owner"))]
        out["to"] = [r for r in recipients if r]
        out["message"] = _template(check, f"{part}.message", params.get("message"))
    elif kind == "change_stage":
        _check_keys(check, part, params, {"stage", "reason"})
        stage = params.get("stage")
        if stage not in {s.value for s in Stage}:
            check.add(f"{part}.stage", f"unknown stage {stage!r} (stages: {', '.join(s.value for s in Stage)})")
        if stage == Stage.ASSIGNED.value:
            check.add(f"{part}.stage", "a lead becomes 'assigned' through the assign action, which names the owner")
        out["stage"] = stage
        if params.get("reason") is not None:
            out["reason"] = str(params["reason"])
    elif kind == "webhook":
        _check_keys(check, part, params, {"url", "timeout", "max_attempts"})
        url = params.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            check.add(f"{part}.url", f"needs an http:// or https:// URL, not {url!r}")
        out["url"] = url
        timeout = params.get("timeout", 5)
        try:
            seconds = float(timeout) if isinstance(timeout, int | float) else parse_delay(timeout).total_seconds()
            if not 0 < seconds <= 120:
                raise ValueError(f"timeout {timeout!r} must be between 0 and 120 seconds")
            out["timeout"] = seconds
        except ValueError as exc:
            check.add(f"{part}.timeout", str(exc))
        attempts = params.get("max_attempts", 5)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 20:
            check.add(f"{part}.max_attempts", f"must be a whole number from 1 to 20, not {attempts!r}")
        out["max_attempts"] = attempts
    if len(check.problems) > before:
        return None
    return Action(str(kind), out)


def parse_rule(raw: Any, *, index: int = 0) -> Rule:
    """Validate one rule definition (a mapping); raises WorkflowError listing every problem."""
    if not isinstance(raw, Mapping):
        raise WorkflowError([f"rules[{index}]: a rule is a mapping with name, trigger and actions"])
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        label = f"rules[{index}]" if not isinstance(name, str) else f"rule {name!r}"
        raise WorkflowError([f"{label}: name: 1-120 letters, digits, '.', '_' or '-' (got {name!r})"])
    check = _Checker(name)
    extra = sorted(set(raw) - _RULE_KEYS)
    if extra:
        check.add(extra[0], f"unknown key (allowed: {', '.join(sorted(_RULE_KEYS))})")
    trigger = raw.get("trigger")
    from_rules: list[str] = []
    if isinstance(trigger, Mapping):
        unknown = sorted(set(trigger) - {"event", "from_rules"})
        if unknown:
            check.add("trigger", f"unknown option {unknown[0]!r} (allowed: event, from_rules)")
        from_rules = [str(r) for r in _as_list(trigger.get("from_rules") or [])]
        trigger = trigger.get("event")
    triggers = [t for t in _as_list(trigger) if t is not None]
    if not triggers:
        check.add("trigger", "needs an event type (e.g. trigger: call_completed)")
    for t in triggers:
        problem = _event_type_problem(t)
        if problem:
            check.add("trigger", problem)
    if any(t in WORKFLOW_EVENT_TYPES for t in triggers) and not from_rules:
        check.add("trigger", "a rule reacting to workflow events must name the rules it follows (from_rules: [...])")
    if from_rules and not all(t in WORKFLOW_EVENT_TYPES for t in triggers):
        check.add("trigger", f"from_rules applies only to {', '.join(sorted(WORKFLOW_EVENT_TYPES))}")
    condition: Expression | None = None
    if raw.get("condition") not in (None, ""):
        text = raw["condition"]
        try:
            ast.parse(str(text).strip(), mode="eval")
        except SyntaxError as exc:
            column = exc.offset if exc.offset and 0 < exc.offset <= len(str(text).strip()) else len(str(text).strip())
            check.add("condition", f"syntax error at column {column} ({exc.msg}) in {str(text)!r}")
        else:
            try:
                condition = parse(str(text), set(CONDITION_NAMES))
            except ExpressionError as exc:
                check.add("condition", exc.reason + f" in {str(text)!r}")
    after: timedelta | None = None
    at: str | None = None
    if raw.get("at") is not None:
        match = re.match(r"^payload\.([A-Za-z_][A-Za-z0-9_]{0,63})$", str(raw["at"]).strip())
        if match is None:
            check.add("at", f"a deadline is read from the trigger event as payload.<key>, not {raw['at']!r}")
        else:
            at = match.group(1)
    if raw.get("after") is not None:
        try:
            after = parse_delay(raw["after"], allow_negative=at is not None)
        except ValueError as exc:
            check.add("after", str(exc))
    unless = [str(u) for u in _as_list(raw.get("unless") or [])]
    for u in unless:
        problem = _event_type_problem(u)
        if problem:
            check.add("unless", problem)
    unless_same = raw.get("unless_same")
    if unless_same is not None:
        if not unless:
            check.add("unless_same", "needs unless: [event types]")
        if not isinstance(unless_same, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", unless_same):
            check.add("unless_same", f"a payload key such as task_id, not {unless_same!r}")
    if unless and after is None and at is None:
        check.add("unless", "needs a delay (after:) or a deadline (at:) to watch for these events")
    actions_raw = raw.get("actions")
    actions: list[Action] = []
    if not isinstance(actions_raw, list) or not actions_raw:
        check.add("actions", f"needs a list of one or more of {', '.join(ACTIONS)}")
    else:
        for i, a in enumerate(actions_raw):
            parsed = _parse_action(check, i, a)
            if parsed is not None:
                actions.append(parsed)
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        check.add("enabled", f"must be true or false, not {enabled!r}")
    description = raw.get("description") or ""
    if check.problems:
        raise WorkflowError(check.problems)
    return Rule(
        name=name,
        description=str(description),
        enabled=bool(enabled),
        triggers=tuple(str(t) for t in triggers),
        from_rules=tuple(from_rules),
        condition=condition,
        after=after,
        at=at,
        unless=tuple(unless),
        unless_same=str(unless_same) if unless_same else None,
        actions=tuple(actions),
    )


def load_yaml(text: str) -> list[Rule]:
    """Parse and validate a rule file; every problem in every rule is reported together."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WorkflowError([f"YAML syntax error{where}: {problem}"]) from None
    if isinstance(data, Mapping):
        data = data.get("rules")
    if not isinstance(data, list):
        raise WorkflowError(["a rule file is a YAML mapping with a 'rules:' list (or a bare list of rules)"])
    rules: list[Rule] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        try:
            rule = parse_rule(raw, index=i)
        except WorkflowError as exc:
            problems.extend(exc.problems)
            continue
        if rule.name in seen:
            problems.append(f"rule {rule.name!r}: name: defined twice in the file")
        seen.add(rule.name)
        rules.append(rule)
    if problems:
        raise WorkflowError(problems)
    return rules


def dump_yaml(rules: Iterable[Rule]) -> str:
    """Rules as a YAML rule file (the format load_yaml reads)."""
    return yaml.safe_dump({"rules": [r.to_dict() for r in rules]}, sort_keys=False, allow_unicode=True, width=110)


def rule_graph(rules: Iterable[Rule]) -> dict[str, dict[str, frozenset[str]]]:
    """Edges A -> B with the event types by which firing A may trigger B."""
    rules = list(rules)
    graph: dict[str, dict[str, frozenset[str]]] = {r.name: {} for r in rules}
    for a in rules:
        emitted = a.emits()
        for b in rules:
            shared = emitted & set(b.triggers)
            if b.from_rules and a.name not in b.from_rules:
                shared = frozenset(t for t in shared if t not in WORKFLOW_EVENT_TYPES)
            if shared:
                graph[a.name][b.name] = frozenset(shared)
    return graph


def find_cycle(rules: Iterable[Rule]) -> list[str] | None:
    """A cycle of rule names (first name repeated at the end), or None."""
    graph = rule_graph(rules)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def describe_cycle(rules: Iterable[Rule], cycle: list[str]) -> str:
    """A cycle in words: which rule triggers which, by which event type."""
    graph = rule_graph(rules)
    steps = [f"{a} writes {'/'.join(sorted(graph[a][b]))} which triggers {b}" for a, b in pairwise(cycle)]
    return f"rule cycle {' -> '.join(cycle)} ({'; '.join(steps)})"
