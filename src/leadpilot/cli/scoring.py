"""``leadpilot scoring``: train a lead-scoring model on your own CSV and evaluate it beside baselines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from leadpilot.cli.common import console, emit_json, fail

app = typer.Typer(
    help="Lead scoring: fit and evaluate a calibrated model on any CSV beside baselines; the CRM's models and rules.",
    no_args_is_help=True,
)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON on stdout.")
BAD_INPUT = 2  # exit status for data the pipeline cannot use (like a usage error: the input must change)


@contextmanager
def _data_errors() -> Iterator[None]:
    """Turn a ScoringDataError into a one-line message and exit status 2."""
    from leadpilot.models.tabular import ScoringDataError

    try:
        yield
    except ScoringDataError as exc:
        fail(escape(str(exc)), code=BAD_INPUT)


def _params(trees: int | None, n_jobs: int, params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"n_jobs": n_jobs}
    if trees is not None:
        params["num_boost_round"] = trees
    if params_json:
        try:
            extra = json.loads(params_json)
        except json.JSONDecodeError as exc:
            fail(f"--params is not JSON: {exc}", code=BAD_INPUT)
        if not isinstance(extra, dict):
            fail("--params must be a JSON object, e.g. '{\"max_depth\": 4}'", code=BAD_INPUT)
        params |= extra
    return params


def _auc(metrics: dict[str, Any]) -> str:
    value = metrics.get("auc")
    return "n/a" if value is None else f"{value:.3f}"


@app.command("fit")
def fit(
    csv: Path = typer.Option(..., "--csv", help="The training data: a CSV (delimiter and encoding are detected)."),
    target: str = typer.Option(..., "--target", help="The outcome column (two values: yes/no, 1/0, won/lost, 是/否)."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (replaced if it holds an older model)."),
    time_col: str | None = typer.Option(
        None, "--time-col", help="Date column: hold out the latest 20 % by it (default: a stratified random 20 %)."
    ),
    id_col: str | None = typer.Option(None, "--id-col", help="Row id column, left out of the features."),
    drop: list[str] = typer.Option([], "--drop", help="A column to leave out (repeat for several)."),
    positive: str | None = typer.Option(
        None, "--positive", help="The positive target value (default: yes/1/true/won/是 if present, else the rarer)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the split and the trees."),
    trees: int | None = typer.Option(None, "--trees", min=1, help="At most this many trees (default 500)."),
    n_jobs: int = typer.Option(2, "--n-jobs", min=1, help="Threads XGBoost may use."),
    params_json: str | None = typer.Option(
        None, "--params", help='More XGBoost parameters as JSON, e.g. \'{"max_depth": 4, "learning_rate": 0.1}\'.'
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Train a calibrated XGBoost model on any tabular CSV and compare it with naive Bayes and logistic regression.

    Column types are inferred (numbers, yes/no, categories, dates, free text; ids dropped). Columns that
    may leak the outcome are warned about, not dropped: use --drop. Nothing is written unless training succeeds.
    """
    from leadpilot.models.pipeline import check_output_directory, fit_model, read_table

    params = _params(trees, n_jobs, params_json)
    with _data_errors():
        check_output_directory(out)  # before training, not after
    with _data_errors(), console.status("reading the CSV") as status:
        frame = read_table(csv)
        status.update(f"read {len(frame):,} rows × {frame.shape[1]} columns")
        result = fit_model(
            frame,
            target=target,
            time_col=time_col,
            id_col=id_col,
            drop=drop,
            positive=positive,
            seed=seed,
            params=params,
            progress=status.update,
        )
        status.update(f"writing {out}")
        result.model.save(out)
    report = result.model.report or result.report
    if json_out:
        emit_json(report | {"model_dir": str(out)})
        return
    for note in report["notes"]:
        console.print(f"[dim]{escape(note)}[/]", highlight=False)
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    metrics, base = report["metrics"], report["baselines"]
    console.print(
        f"AUC {_auc(metrics)} (naive Bayes {_auc(base['naive_bayes'])}, logistic regression "
        f"{_auc(base['logistic_regression'])}) on {metrics['n']:,} held-out rows "
        f"({report['split']['method']} split), {report['features']} features; saved to {escape(str(out))}"
    )


@app.command("evaluate")
def evaluate(
    model_dir: Path = typer.Option(..., "--model", help="A model directory written by `leadpilot scoring fit`."),
    csv: Path = typer.Option(..., "--csv", help="Data with the model's columns and the target (every row is used)."),
    target: str = typer.Option(..., "--target", help="The outcome column."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Measure a saved model and its saved baselines on every row of a CSV (AUC, PR-AUC, log loss, Brier, lift)."""
    from leadpilot.models.pipeline import ScoringModel, evaluate_model, read_table

    with _data_errors(), console.status(f"loading {model_dir}") as status:
        model = ScoringModel.load(model_dir)
        status.update(f"reading {csv}")
        frame = read_table(csv)
        status.update(f"scoring {len(frame):,} rows")
        result = evaluate_model(model, frame, target=target)
    if json_out:
        emit_json(result)
        return
    for warning in result["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    base = result["baselines"]
    lift = result["lift"].get("10%")
    console.print(
        f"AUC {_auc(result)} (naive Bayes {_auc(base['naive_bayes'])}, logistic regression "
        f"{_auc(base['logistic_regression'])}), PR-AUC {result['pr_auc']}, Brier {result['brier']}, "
        f"lift@10% {lift} on {result['n']:,} rows ({result['positives']:,} {model.positive_label!r})"
    )
