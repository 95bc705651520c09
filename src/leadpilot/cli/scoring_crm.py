"""``leadpilot scoring`` commands for the CRM's own models: train, rescore, explain, retrain, drift, registry,
cold-start rules and the manual review queue (``fit`` / ``evaluate`` for any CSV live in ``cli.scoring``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, domain_errors, emit_json, engine, fail, require_migrated, settings
from leadpilot.crm.access import SYSTEM
from leadpilot.features.store import FeatureStore, FeatureStoreError
from leadpilot.models import crm_training, lifecycle, registry, rules
from leadpilot.models.crm_training import MODEL_NAMES, TrainingDataError
from leadpilot.models.service import NoChampion, ScoringService
from leadpilot.models.tabular import ScoringDataError

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")
MODEL_OPTION = typer.Option("all", "--model", help="transfer, convert or all.")

models_app = typer.Typer(help="The model registry: versions, champion, promote, roll back.", no_args_is_help=True)
rules_app = typer.Typer(help="Cold-start scoring rules ('condition -> action'), versioned.", no_args_is_help=True)
review_app = typer.Typer(help="The manual review queue of rule-selected leads.", no_args_is_help=True)


def _names(model: str) -> list[str]:
    if model == "all":
        return list(MODEL_NAMES)
    if model not in MODEL_NAMES:
        fail(f"--model must be one of {', '.join(MODEL_NAMES)} or all, not {model!r}")
    return [model]


def _engine() -> Engine:
    """The CRM database, refusing an unmigrated one."""
    eng = engine()
    require_migrated(eng)
    return eng


def _store() -> FeatureStore:
    from leadpilot.cli.features import _store as feature_store

    return feature_store(None)


@contextmanager
def _errors() -> Iterator[None]:
    """Known failures become one clear line and exit code 2 (bad data) or 1."""
    try:
        with domain_errors():
            yield
    except (TrainingDataError, ScoringDataError, FeatureStoreError, NoChampion) as exc:
        fail(str(exc), code=2)


def _say(json_out: bool) -> Any:
    return None if json_out else (lambda message: console.print(f"[dim]{message}[/]"))


def train_models(
    model: str = "all", *, max_rows: int | None = 200_000, trees: int | None = None, quiet: bool = False
) -> list[dict[str, Any]]:
    """Train and register the CRM models (the first of each name becomes champion); used by the demo too."""
    eng = _engine()
    store = _store()
    params = {"num_boost_round": trees} if trees else None
    out = []
    for name in _names(model):
        trained = crm_training.train(
            eng, store, name, data_dir=settings().data_dir, max_rows=max_rows, params=params, progress=_say(quiet)
        )
        out.append(trained.to_json())
    return out


def register(app: typer.Typer) -> None:
    """Add these commands to the ``scoring`` Typer app."""
    app.command("train")(train)
    app.command("rescore")(rescore)
    app.command("explain")(explain)
    app.command("retrain")(retrain)
    app.command("drift")(drift)
    app.command("watch")(watch)
    app.add_typer(models_app, name="models")
    app.add_typer(rules_app, name="rules")
    app.add_typer(review_app, name="review")


def train(
    model: str = MODEL_OPTION,
    max_rows: int = typer.Option(200_000, "--max-rows", min=100, help="Train on at most the newest N examples."),
    trees: int | None = typer.Option(None, "--trees", min=1, help="Boosting rounds (default: the pipeline's)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Train p(transfer) and/or p(convert) on the event log's outcomes (point-in-time features, split by time)."""
    with _errors():
        results = train_models(model, max_rows=max_rows, trees=trees, quiet=json_out)
    if json_out:
        emit_json(results)
        return
    for r in results:
        base = r["baseline_metrics"]
        console.print(
            f"{r['name']} v{r['version']} ({r['status']}): {r['examples']:,} examples, {r['positives']:,} positive; "
            f"held-out AUC {r['metrics'].get('auc')} (naive Bayes {base.get('naive_bayes', {}).get('auc')}, "
            f"logistic regression {base.get('logistic_regression', {}).get('auc')})"
        )


def rescore(
    changed: bool = typer.Option(False, "--changed", help="Only leads with events since their last score."),
    lead: list[int] | None = typer.Option(None, "--lead", help="Only this lead (repeatable)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Score open leads with the champions; save the scores that moved and write score_changed events."""
    eng = _engine()
    with _errors():
        service = ScoringService(eng, _store())
        ids = lead or (service.changed_leads() if changed else None)
        report = service.rescore(lead_ids=ids, progress=_say(json_out))
    if json_out:
        emit_json(report.to_json())
    else:
        console.print(
            f"scored {sum(report.scored.values()):,} leads ({report.scored}) with {report.models}; "
            f"{report.changed:,} scores changed in {report.seconds:.1f}s"
        )


def explain(
    lead_id: int = typer.Argument(..., help="Lead id."),
    top: int = typer.Option(3, "--top", min=1, max=20, help="Factors each way."),
    json_out: bool = JSON_OPTION,
) -> None:
    """A lead's score now and the factors that raise and lower it, in words."""
    eng = _engine()
    with _errors():
        data = ScoringService(eng, _store()).explain(lead_id, top=top)
    if json_out:
        emit_json(data)
        return
    if "note" in data:
        console.print(data["note"])
    for name, m in data["models"].items():
        if "error" in m:
            console.print(f"{name}: {m['error']}")
            continue
        console.print(f"[bold]{name}[/] v{m['version']}: score {m['score']:.3f}")
        for f in m["up"]:
            console.print(f"  [green]+[/] {f['text']}")
        for f in m["down"]:
            console.print(f"  [red]-[/] {f['text']}")


def retrain(model: str = MODEL_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Train a challenger on the newest outcomes; promote it only if it beats the champion on the newest window."""
    eng = _engine()
    out = []
    with _errors():
        store = _store()
        for name in _names(model):
            out.append(lifecycle.retrain(eng, store, name, data_dir=settings().data_dir, progress=_say(json_out)))
    if json_out:
        emit_json(out)
        return
    for r in out:
        if "champion" not in r:
            console.print(f"{r['model']}: v{r['challenger']} is the first model and serves now")
            continue
        console.print(
            f"{r['model']}: challenger v{r['challenger']} AUC {r['challenger_metrics']['auc']} vs champion "
            f"v{r['champion']} {r['champion_metrics']['auc']} on {r['window']['n']:,} newest examples: "
            + ("promoted" if r["promoted"] else "not promoted")
        )


def drift(
    model: str = MODEL_OPTION,
    days: int = typer.Option(30, "--days", min=1, help="The recent window compared with the training data."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Population stability index of each champion's score and top inputs: training data vs the last N days."""
    eng = _engine()
    out = []
    with _errors():
        store = _store()
        for name in _names(model):
            out.append(lifecycle.drift_report(eng, store, name, recent_days=days, progress=_say(json_out)))
    if json_out:
        emit_json(out)
        return
    for r in out:
        console.print(f"[bold]{r['model']}[/] v{r['version']}: {r['verdict']} (score PSI {r['score_psi']})")
        for f in r["features"][:10]:
            console.print(f"  {f['psi']:>7.4f}  {f['verdict']:8} {f['column']}")


def watch(
    every: int = typer.Option(300, "--every", min=5, help="Seconds between passes over changed leads."),
    full_every: int = typer.Option(21_600, "--full-every", min=60, help="Seconds between full rescoring runs."),
    once: bool = typer.Option(False, "--once", help="One pass (a full run) and stop."),
) -> None:
    """Keep scores fresh: rescore leads with new events every --every s, every open lead every --full-every s."""
    eng = _engine()
    service = ScoringService(eng, _store())
    last_full = 0.0
    with _errors():
        while True:
            now = time.monotonic()
            full = now - last_full >= full_every or once
            ids = None if full else service.changed_leads()
            if full or ids:
                report = service.rescore(lead_ids=ids)
                console.print(
                    f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} {'full' if full else 'changed'}: "
                    f"{sum(report.scored.values()):,} scored, {report.changed:,} changed"
                )
                if full:
                    last_full = now
            if once:
                return
            time.sleep(every)


# -- registry ---------------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(
    name: str | None = typer.Option(None, "--name", help="Only this model."), json_out: bool = JSON_OPTION
) -> None:
    """Registered versions with status, data range, held-out AUC and the baselines'."""
    eng = _engine()
    with Session(eng) as session:
        rows = [registry.version_json(r) for r in registry.list_versions(session, name=name)]
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        base = r["baseline_metrics"]
        console.print(
            f"{r['name']:10} v{r['version']:<3} {r['status']:10} AUC {r['metrics'].get('auc')} "
            f"(NB {base.get('naive_bayes', {}).get('auc')}, LR {base.get('logistic_regression', {}).get('auc')}) "
            f"data {r['data_from']} .. {r['data_to']}, {r['n_train']:,} train / {r['n_test']:,} test"
        )


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="Model name (transfer, convert, ...)."),
    version: int = typer.Argument(..., help="Version to serve."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Make a version the champion (the previous champion is archived)."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        row = registry.promote(session, actor=SYSTEM, name=name, version=version)
        session.commit()
        data = registry.version_json(row)
    emit_json(data) if json_out else console.print(f"{name} v{version} is the champion")


@models_app.command("rollback")
def models_rollback(name: str = typer.Argument(..., help="Model name."), json_out: bool = JSON_OPTION) -> None:
    """Give the champion role back to the previous champion."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        row = registry.rollback(session, actor=SYSTEM, name=name)
        session.commit()
        data = registry.version_json(row)
    emit_json(data) if json_out else console.print(f"{name}: v{data['version']} is the champion again")


# -- rules ------------------------------------------------------------------------------------------------
@rules_app.command("add")
def rules_add(
    name: str = typer.Argument(..., help="Rule name (saving an existing name adds a version)."),
    text: str = typer.Argument(..., help="'condition -> action', e.g. 'budget > 500000 -> priority: high, review'."),
    disabled: bool = typer.Option(False, "--disabled", help="Save it switched off."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate and save a rule (unknown fields are named, with close matches)."""
    eng = _engine()
    catalogue = rules.RuleCatalogue.build(_store().dictionary)
    with domain_errors(), Session(eng) as session:
        row = rules.save_rule(session, actor=SYSTEM, name=name, text=text, catalogue=catalogue, enabled=not disabled)
        session.commit()
        data = rules.rule_json(row)
    emit_json(data) if json_out else console.print(f"rule {name!r} v{data['version']} saved")


@rules_app.command("list")
def rules_list(
    history: bool = typer.Option(False, "--history", help="Every version."), json_out: bool = JSON_OPTION
) -> None:
    """The current rules (or every version)."""
    eng = _engine()
    with Session(eng) as session:
        rows = [rules.rule_json(r) for r in rules.list_rules(session, history=history)]
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        state = "on " if r["enabled"] else "off"
        console.print(f"{state} {r['name']} v{r['version']}: {r['text']}")


def _set(name: str, enabled: bool) -> None:
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        rules.set_enabled(session, actor=SYSTEM, name=name, enabled=enabled)
        session.commit()
    console.print(f"rule {name!r} {'enabled' if enabled else 'disabled'}")


@rules_app.command("enable")
def rules_enable(name: str = typer.Argument(..., help="Rule name.")) -> None:
    """Switch a rule on."""
    _set(name, True)


@rules_app.command("disable")
def rules_disable(name: str = typer.Argument(..., help="Rule name.")) -> None:
    """Switch a rule off."""
    _set(name, False)


@rules_app.command("run")
def rules_run(
    dry_run: bool = typer.Option(False, "--dry-run", help="Count matches, change nothing."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Evaluate the rules on every open lead: set priorities, queue leads for review."""
    eng = _engine()
    with _errors():
        run = rules.evaluate_rules(eng, store=_store(), apply=not dry_run)
    if json_out:
        emit_json(run.to_json())
        return
    console.print(
        f"{run.leads:,} open leads; matches {run.matches}; {run.priority_changed:,} priorities "
        f"{'would change' if dry_run else 'changed'}, {run.review_added:,} leads queued for review ({run.seconds:.1f}s)"
    )


# -- review queue -----------------------------------------------------------------------------------------
@review_app.command("list")
def review_list(
    status: str = typer.Option("pending", "--status", help="pending, approved or rejected."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
    cursor: str | None = typer.Option(None, "--cursor", help="From a previous page's next_cursor."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Leads waiting for (or decided in) manual review."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        page = rules.list_review(session, actor=SYSTEM, status=status, cursor=cursor, limit=limit)
        items = [rules.review_json(i) for i in page.items]
    if json_out:
        emit_json({"items": items, "next_cursor": page.next_cursor})
        return
    for i in items:
        console.print(f"#{i['id']} lead {i['lead_id']} rule {i['rule_id']} {i['status']}")
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


def _decide(item_id: int, approve: bool, note: str) -> None:
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        item = rules.decide_review(session, actor=SYSTEM, item_id=item_id, approve=approve, note=note)
        session.commit()
        console.print(f"review #{item_id} (lead {item.lead_id}) {item.status}")


@review_app.command("approve")
def review_approve(item_id: int = typer.Argument(...), note: str = typer.Option("", "--note")) -> None:
    """Approve a queued lead (the rule's priority applies at the next run)."""
    _decide(item_id, True, note)


@review_app.command("reject")
def review_reject(item_id: int = typer.Argument(...), note: str = typer.Option("", "--note")) -> None:
    """Reject a queued lead (the rule's priority never applies to it)."""
    _decide(item_id, False, note)
