"""``leadpilot experiments``: A/B tests of routing strategies: create, list, show, start, stop, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, domain_errors, emit_json, engine, require_migrated
from leadpilot.crm.access import SYSTEM
from leadpilot.experiments import service
from leadpilot.experiments.strategies import STRATEGIES

app = typer.Typer(help="Experiments: A/B tests of routing strategies (arms, shares, reports).", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


def _engine() -> Engine:
    """The CRM database, refusing an unmigrated one."""
    eng = engine()
    require_migrated(eng)
    return eng


def _line(row: dict[str, Any]) -> str:
    arms = ", ".join(f"{a['name']}={a['strategy']}@{a['share']:g}" for a in row["arms"])
    return f"{row['key']} [{row['status']}] unit={row['unit']}: {arms}"


@app.command("create")
def create(
    key: str = typer.Argument(..., help="The experiment's key (letters, digits, '_', '.', '-')."),
    unit: str = typer.Option(..., "--unit", help="What is bucketed into arms: lead or salesperson."),
    arm: list[str] = typer.Option(
        ..., "--arm", help=f"NAME:STRATEGY:SHARE, repeated; the first arm is the control. Strategies: {STRATEGIES}."
    ),
    name: str = typer.Option("", "--name", help="A human-readable name (default: the key)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Create an experiment in draft: arms with strategies and traffic shares adding up to 1."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        arms = [service.parse_arm(a) for a in arm]
        row = service.create_experiment(session, actor=SYSTEM, key=key, unit=unit, arms=arms, name=name)
        session.commit()
        data = service.experiment_json(row)
    emit_json(data) if json_out else console.print(f"created {_line(data)}")


@app.command("list")
def list_(json_out: bool = JSON_OPTION) -> None:
    """List experiments, newest first."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        rows = [service.experiment_json(r) for r in service.list_experiments(session, actor=SYSTEM)]
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        console.print(_line(row))
    console.print(f"{len(rows):,} experiments")


@app.command("show")
def show(key: str = typer.Argument(..., help="The experiment's key."), json_out: bool = JSON_OPTION) -> None:
    """Show one experiment: unit, arms, status and times."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        data = service.experiment_json(service.get_experiment(session, actor=SYSTEM, key=key))
    if json_out:
        emit_json(data)
        return
    console.print(_line(data))
    console.print(f"started {data['started_at'] or '-'}, stopped {data['stopped_at'] or '-'}")


@app.command("start")
def start(key: str = typer.Argument(..., help="The experiment's key."), json_out: bool = JSON_OPTION) -> None:
    """Start a draft experiment: `leadpilot distribute run --assign --experiment KEY` then routes by it."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        row = service.start_experiment(session, actor=SYSTEM, key=key)
        session.commit()
        data = service.experiment_json(row)
    emit_json(data) if json_out else console.print(f"started {_line(data)}")


@app.command("stop")
def stop(key: str = typer.Argument(..., help="The experiment's key."), json_out: bool = JSON_OPTION) -> None:
    """Stop a running experiment (its exposures and outcomes stay for the report)."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        row = service.stop_experiment(session, actor=SYSTEM, key=key)
        session.commit()
        data = service.experiment_json(row)
    emit_json(data) if json_out else console.print(f"stopped {_line(data)}")


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if percent else f"{value:,.2f}"


def _ci(pair: list[float | None], percent: bool = True) -> str:
    return f"[{_fmt(pair[0], percent)}, {_fmt(pair[1], percent)}]"


@app.command("report")
def report(
    key: str = typer.Argument(..., help="The experiment's key."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write a PNG chart of the arms to this path."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
    json_out: bool = JSON_OPTION,
) -> None:
    """CTCVR, CVR and revenue per lead per arm with 95% intervals, p-values against the control, SRM check."""
    eng = _engine()
    with domain_errors(), Session(eng) as session:
        data = service.report(session, actor=SYSTEM, key=key, seed=seed, plot=plot)
    if json_out:
        emit_json(data)
        return
    console.print(_line(data["experiment"]) + f"; {data['exposures']:,} exposures")
    for name, m in data["arms"].items():
        console.print(
            f"  {name} ({m['strategy']}): {m['exposures']:,} exposed, {m['units']:,} units; "
            f"CTCVR {_fmt(m['ctcvr'])} {_ci(m['ctcvr_ci'])}, CVR {_fmt(m['cvr'])} {_ci(m['cvr_ci'])}, "
            f"revenue/lead {_fmt(m['revenue_per_lead'], False)} {_ci(m['revenue_per_lead_ci'], False)}"
        )
    for name, c in data["vs_control"].items():
        console.print(
            f"  {name} vs {data['control']}: CTCVR p={c['ctcvr_p_z']:.4g} (z), {c['ctcvr_p_bootstrap']:.4g} "
            f"(bootstrap); CVR p={c['cvr_p_z']:.4g}; revenue/lead p={c['revenue_p_bootstrap']:.4g} (bootstrap)"
        )
    srm = data.get("sample_ratio") or {}
    verdict = "MISMATCH: the split is broken" if srm.get("mismatch") else "ok"
    console.print(f"  sample ratio: {verdict} (chi2 {srm.get('chi2')}, p={srm.get('p_value', 1.0):.4g})")
    if plot is not None:
        console.print(f"plot written to {data['plot']}")
