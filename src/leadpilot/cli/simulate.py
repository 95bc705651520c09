"""``leadpilot simulate``: generate a simulated company, replay routing policies, check calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leadpilot.cli.common import console, emit_json, engine, fail, require_migrated, settings
from leadpilot.simulate.world import SCALES, World

app = typer.Typer(
    help="The simulated sales organisation (demo data, ground truth, policy replay).", invoke_without_command=True
)
WORLD_FILE = "world.json"


def _world_file() -> Path:
    return settings().data_dir / "simulation" / WORLD_FILE


def _load_world(scale: str | None, seed: int | None, days: int | None) -> World:
    """The world of the last generation run, unless scale/seed/days are given."""
    saved: dict[str, Any] = json.loads(_world_file().read_text()) if _world_file().exists() else {}
    chosen = str(scale or saved.get("scale") or "")
    if not chosen:
        fail("no simulated company yet: run `leadpilot simulate --scale small` or pass --scale")
    if chosen not in SCALES:
        fail(f"unknown scale {chosen!r}; choose one of {', '.join(SCALES)}")
    return World(
        chosen,
        seed=seed if seed is not None else saved.get("seed", 7),
        days=days if days is not None else saved.get("days", 548),
    )


def run_generation(
    scale: str, seed: int, days: int, logins: dict[str, str] | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Generate into the configured database with a progress bar; returns the summary as JSON data."""
    from leadpilot.simulate.generate import AlreadySimulated, generate

    cfg = settings()
    eng = engine()
    require_migrated(eng)
    world = World(scale, seed=seed, days=days)
    with Progress(
        TextColumn(f"simulating {scale} company"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task("leads", total=None)
        try:
            summary = generate(
                eng,
                world,
                data_dir=cfg.data_dir,
                logins=logins,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except AlreadySimulated as exc:
            fail(str(exc))
    _world_file().write_text(json.dumps({"scale": scale, "seed": seed, "days": days}))
    return summary.to_json()


@app.callback()
def simulate(
    ctx: typer.Context,
    scale: str = typer.Option("small", "--scale", help=f"Company size: {', '.join(SCALES)}."),
    seed: int = typer.Option(7, "--seed", help="Random seed; the same seed gives the same company."),
    days: int = typer.Option(548, "--days", min=30, help="Days of history (548 ≈ 18 months)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a simulated company's history into an empty CRM store (and its hidden truth beside it)."""
    if ctx.invoked_subcommand is not None:
        return
    if scale not in SCALES:
        fail(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    data = run_generation(scale, seed, days, quiet=json_out)
    if json_out:
        emit_json(data)
    else:
        console.print(
            f"simulated {scale} company (seed {seed}, {days} days): {data['users']} users, "
            f"{data['leads']:,} leads, {data['events']:,} events in {data['seconds']:.1f}s "
            f"({data['events_per_second']:,.0f} events/s); truth in {data['truth_file']}"
        )


@app.command("replay")
def replay_command(
    policy: str = typer.Option(
        "round_robin",
        "--policy",
        help="random, round_robin, least_busy, score_round_robin, v1_xgb, v2_mmoe, v2_ple, oracle, or all "
        "(model policies train on the history before the replay).",
    ),
    days: int = typer.Option(30, "--days", min=1, help="Days to replay after the history."),
    policy_seed: int = typer.Option(0, "--policy-seed", help="Seed of the policy's own randomness."),
    scale: str | None = typer.Option(None, "--scale", help="Default: the last generated company."),
    seed: int | None = typer.Option(None, "--seed", help="Default: the last generated company's."),
    seeds: int = typer.Option(
        1, "--seeds", min=1, help="Replay this many companies (seed, seed+1, ...): means with 95 % intervals."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Run routing policies forward day by day on the same luck and report CTCVR, CVR, revenue, load."""
    from leadpilot.simulate.replay import POLICIES, ReplayEnv

    world = _load_world(scale, seed, None)
    names = list(POLICIES) if policy == "all" else [policy]
    for name in names:
        if name not in POLICIES:
            fail(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))} or all")
    results = []
    for offset in range(seeds):
        env = ReplayEnv(World(world.scale, seed=world.seed + offset, days=world.days) if offset else world, days=days)
        for name in names:
            results.append({"world_seed": world.seed + offset} | env.run(POLICIES[name](env, policy_seed)).to_json())
    if seeds > 1:
        results = [_over_seeds(name, [r for r in results if r["policy"] == name]) for name in names]
    if json_out:
        emit_json(results[0] if len(results) == 1 else results)
        return
    for r in results:
        console.print(
            f"{r['policy']:18} CTCVR {r['ctcvr']:.4f}  CVR {r['cvr']:.4f}  revenue/lead "
            f"{r['revenue_per_lead']:.1f}  speed-to-lead {r['speed_to_lead_hours']:.1f} h  load CV "
            f"{r['load_cv']:.2f}  ({r['assigned']} assigned, {r['days']} days)"
        )


def _over_seeds(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's replays on several companies: each metric's mean, and its 95 % t-interval as ``<metric>_ci95``."""
    from scipy import stats

    out: dict[str, Any] = {"policy": name, "seeds": [r["world_seed"] for r in runs]}
    for key, first in runs[0].items():
        if isinstance(first, int | float) and not isinstance(first, bool) and key != "world_seed":
            x = [float(r[key]) for r in runs]
            mean = sum(x) / len(x)
            spread = (sum((v - mean) ** 2 for v in x) / (len(x) - 1)) ** 0.5
            half = float(stats.t.ppf(0.975, len(x) - 1)) * spread / len(x) ** 0.5
            out[key] = mean
            out[f"{key}_ci95"] = [mean - half, mean + half]
    return out


@app.command("calibrate")
def calibrate(
    data: Path = typer.Option(
        Path("../shared/data"), "--data", help="Folder with bank_marketing/ and crm_sales_opportunities/."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare the simulated CRM store's statistics with the real public data sets."""
    from leadpilot.simulate.calibration import comparison, real_statistics, simulated_statistics

    eng = engine()
    require_migrated(eng)
    try:
        real = real_statistics(data)
    except FileNotFoundError as exc:
        fail(str(exc))
    rows = comparison(real, simulated_statistics(eng))
    if json_out:
        emit_json(rows)
        return
    for row in rows:
        console.print(f"{row['statistic']:48} real {row['real']:>10}  simulated {row['simulated']:>10}")
