"""The workflow rules editor (docs/web.md): list, enable/disable, YAML validate/save, export, install defaults.

Every action calls ``leadpilot.workflow.service`` (the functions behind ``leadpilot workflow ...``), so the
validation messages shown are exactly the service's, naming the rule and the bad part. Admins edit;
supervisors see the same page read-only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, Request, Response
from sqlalchemy import func, select

from leadpilot.crm.access import Actor
from leadpilot.crm.errors import DomainError
from leadpilot.crm.models import Role
from leadpilot.web.i18n import translate
from leadpilot.web.routes import (
    CSRF,
    PageExit,
    check_csrf,
    error_page,
    language,
    page,
    reading,
    redirect,
    render,
    require,
    router,
    writing,
)
from leadpilot.workflow import service as workflow_service
from leadpilot.workflow.rules import WorkflowError
from leadpilot.workflow.tables import WorkflowFiring

EDITORS = frozenset({Role.ADMIN})
MAX_YAML = 100_000
NEW_RULE_EXAMPLE = """rules:
  - name: my-rule
    enabled: false
    trigger: note
    actions:
      - notify: {to: owner, message: "Lead {lead_id} has a new note"}
"""


def _require_editor(request: Request, actor: Actor) -> None:
    """Refuse (403 page) a change by someone who may only read the rules."""
    if actor.role not in EDITORS:
        raise PageExit(error_page(request, actor, 403, translate(language(request), "workflow.read_only")))


def _context(request: Request, actor: Actor) -> dict[str, Any]:
    """The rules with their YAML, firing counts and the page's blank state."""
    with reading(request) as db:
        rules = workflow_service.list_rules(db)
        # One grouped count over the (rule_id, trigger_key) unique index: cheap even with many firings.
        grouped = db.execute(select(WorkflowFiring.rule_id, func.count()).group_by(WorkflowFiring.rule_id))
        counts = {int(rule_id): int(n) for rule_id, n in grouped}
        for rule in rules:
            rule["firings"] = int(counts.get(rule["id"], 0))
            rule["yaml"] = workflow_service.export_yaml(db, names=[rule["name"]])
    return {
        "rules": rules,
        "can_edit": actor.role in EDITORS,
        "editing": None,  # "" (the new-rule editor) or a rule name: the editor the message belongs to
        "text": "",
        "errors": [],
        "valid": None,
        "new_text": NEW_RULE_EXAMPLE,
        "done": request.query_params.get("done"),
    }


@router.get("/admin/workflow")
@page
def workflow_page(request: Request) -> Response:
    """Workflow rules: list, enable/disable, a YAML editor per rule and for new rules."""
    actor = require(request, "workflow")
    return render(request, "workflow.html", actor, _context(request, actor))


@router.post("/admin/workflow")
@page
def workflow_edit(
    request: Request,
    text: Annotated[str, Form(max_length=MAX_YAML)] = "",
    rule: Annotated[str, Form(max_length=200)] = "",
    op: Annotated[str, Form(max_length=20)] = "validate",
    csrf_token: CSRF = "",
) -> Response:
    """Validate (``workflow.service.validate_yaml``) or save (``import_yaml``) the YAML of one editor.

    On any problem the page shows every message of the service beside the editor, with the text as typed;
    nothing is stored.
    """
    actor = require(request, "workflow")
    check_csrf(request, csrf_token)
    _require_editor(request, actor)
    if op not in ("validate", "save"):
        return error_page(request, actor, 422, f"op: 'validate' or 'save', not {op!r}")
    valid: list[str] | None = None
    try:
        if op == "validate":
            with reading(request) as db:
                valid = [r.name for r in workflow_service.validate_yaml(db, text=text)]
        else:
            with writing(request) as db:
                result = workflow_service.import_yaml(db, actor=actor, text=text)
                db.commit()
            changed = ",".join(result["created"] + result["updated"])
            return redirect("/admin/workflow", done="saved", names=changed or "-")
    except DomainError as exc:
        context = _context(request, actor)
        problems = exc.problems if isinstance(exc, WorkflowError) else [exc.message]
        context.update(editing=rule, text=text, errors=problems)
        return render(request, "workflow.html", actor, context, status=exc.status_code)
    context = _context(request, actor)
    context.update(editing=rule, text=text, valid=valid)
    return render(request, "workflow.html", actor, context)


@router.post("/admin/workflow/enabled")
@page
def workflow_enable(
    request: Request,
    name: Annotated[str, Form(max_length=200)] = "",
    enabled: Annotated[str, Form(max_length=10)] = "",
    csrf_token: CSRF = "",
) -> Response:
    """Switch a rule on or off (``workflow.service.set_enabled``); enabling checks the rule against the database."""
    actor = require(request, "workflow")
    check_csrf(request, csrf_token)
    _require_editor(request, actor)
    on = enabled in ("1", "true", "on")
    try:
        with writing(request) as db:
            workflow_service.set_enabled(db, actor=actor, name=name, enabled=on)
            db.commit()
    except DomainError as exc:
        context = _context(request, actor)
        problems = exc.problems if isinstance(exc, WorkflowError) else [exc.message]
        context.update(editing=name, errors=problems, text=_current_yaml(context, name))
        return render(request, "workflow.html", actor, context, status=exc.status_code)
    return redirect("/admin/workflow", done="enabled" if on else "disabled", names=name)


def _current_yaml(context: dict[str, Any], name: str) -> str:
    """The stored YAML of the named rule in a page context ("" when there is none)."""
    return next((r["yaml"] for r in context["rules"] if r["name"] == name), "")


@router.post("/admin/workflow/defaults")
@page
def workflow_defaults(request: Request, csrf_token: CSRF = "") -> Response:
    """Store the shipped example rules not stored yet, disabled (``workflow.service.install_defaults``)."""
    actor = require(request, "workflow")
    check_csrf(request, csrf_token)
    _require_editor(request, actor)
    try:
        with writing(request) as db:
            result = workflow_service.install_defaults(db, actor=actor, enable=False)
            db.commit()
    except DomainError as exc:
        context = _context(request, actor)
        problems = exc.problems if isinstance(exc, WorkflowError) else [exc.message]
        context.update(errors=problems, editing="")
        return render(request, "workflow.html", actor, context, status=exc.status_code)
    return redirect("/admin/workflow", done="defaults", names=",".join(result["created"]) or "-")


@router.get("/admin/workflow/export")
@page
def workflow_export(request: Request) -> Response:
    """Every stored rule as one YAML rule file, downloaded (``workflow.service.export_yaml``)."""
    require(request, "workflow")
    with reading(request) as db:
        text = workflow_service.export_yaml(db)
    return Response(
        text,
        media_type="application/yaml; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="workflow_rules.yaml"', "Cache-Control": "no-store"},
    )
