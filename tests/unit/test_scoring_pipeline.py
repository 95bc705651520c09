"""The scoring pipeline: honest held-out metrics beside baselines, calibration, persistence, explanations, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from leadpilot.models import pipeline
from leadpilot.models.pipeline import FitResult, ScoringModel, check_leakage, evaluate_model, fit_model, read_table
from leadpilot.models.tabular import (
    EmptyDataError,
    ModelDirectoryError,
    ModelSchemaError,
    MultiClassTargetError,
    NoFeaturesError,
    ScoringDataError,
    SingleClassTargetError,
    TargetNotFoundError,
    UnknownLabelError,
)
from tests.unit.test_scoring_tabular import make_leads, write_csv

# Few, fast trees: the tests check behaviour, the benchmark checks quality at full size.
FAST = {"num_boost_round": 200, "early_stopping_rounds": 30, "learning_rate": 0.1, "max_depth": 4, "n_jobs": 1}
TINY = FAST | {"num_boost_round": 20}
METRIC_KEYS = {"auc", "pr_auc", "log_loss", "brier", "lift", "gain", "n", "positives"}


@pytest.fixture(scope="module")
def leads() -> pd.DataFrame:
    return make_leads(4000, seed=0)


@pytest.fixture(scope="module")
def fitted(leads: pd.DataFrame) -> FitResult:
    return fit_model(
        leads, target="outcome", id_col="lead_id", params=FAST, feature_labels={"visits": "website visits"}
    )


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_beats_both_baselines_on_the_same_held_out_rows(fitted: FitResult) -> None:
    report = fitted.report
    metrics, baselines = report["metrics"], report["baselines"]
    assert set(metrics) >= METRIC_KEYS
    assert set(baselines) == {"naive_bayes", "logistic_regression"}
    assert metrics["n"] == 800 == baselines["naive_bayes"]["n"] == baselines["logistic_regression"]["n"]
    assert metrics["positives"] == baselines["naive_bayes"]["positives"]
    # The outcome depends on an interaction and thresholds that neither baseline can represent.
    assert metrics["auc"] > 0.78
    for name, base in baselines.items():
        assert metrics["auc"] > base["auc"] + 0.03, name
        assert 0.5 < base["auc"] < 0.85, name
    assert metrics["lift"]["10%"] > 1.5 and 0 < metrics["gain"]["10%"] < 1
    assert list(metrics["lift"]) == ["1%", "5%", "10%", "20%"]
    assert len(metrics["calibration"]) == 10 and sum(b["count"] for b in metrics["calibration"]) == 800
    assert report["split"] == {
        "method": "stratified",
        "fit_rows": 2400,
        "valid_rows": 320,
        "calibration_rows": 480,
        "test_rows": 800,
        "seed": 0,
        "test_share": 0.2,
    }
    assert fitted.warnings == []
    assert "column 'lead_id' left out: the id column" in report["notes"]
    assert "positive class: 'won' (the usual positive word); the other: 'lost'" in report["notes"]


def test_calibration_keeps_a_calibrated_model_and_fixes_a_skewed_one(fitted: FitResult, leads: pd.DataFrame) -> None:
    calibration = fitted.report["calibration"]
    assert calibration["test_brier_calibrated"] <= calibration["test_brier_raw"] + 0.002
    # Up-weighting positives inflates the booster's probabilities; the calibrator must undo it.
    skewed = fit_model(leads, target="outcome", params=FAST | {"num_boost_round": 60, "scale_pos_weight": 6.0}).report
    assert skewed["calibration"]["method"] in {"platt", "isotonic"}
    assert skewed["calibration"]["test_brier_calibrated"] < skewed["calibration"]["test_brier_raw"] - 0.01
    assert skewed["uncalibrated"]["mean_predicted"] > skewed["metrics"]["base_rate"] + 0.1
    assert abs(skewed["metrics"]["mean_predicted"] - skewed["metrics"]["base_rate"]) < 0.03


def test_is_deterministic_with_a_seed() -> None:
    leads = make_leads(1500, seed=4)
    first, again = (fit_model(leads, target="outcome", seed=3, params=TINY).model for _ in range(2))
    np.testing.assert_array_equal(again.predict_proba(leads), first.predict_proba(leads))
    other = fit_model(leads, target="outcome", seed=4, params=TINY).model
    assert not np.array_equal(other.predict_proba(leads), first.predict_proba(leads))


def test_save_load_round_trip(fitted: FitResult, leads: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "model"
    fitted.model.save(out)
    assert {p.name for p in out.iterdir()} == {
        "model.json",
        "encoder.json",
        "calibrator.json",
        "baselines.json",
        "meta.json",
        "report.json",
        "calibration.png",
    }
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["calibration_plot"] == "calibration.png"
    meta = json.loads((out / "meta.json").read_text())
    for key in (
        "format_version",
        "schema_fingerprint",
        "target",
        "positive_label",
        "feature_names",
        "data_range",
        "params",
        "metrics",
        "baseline_metrics",
        "warnings",
        "created_at",
        "leadpilot_version",
    ):
        assert key in meta, key
    assert meta["metrics"]["auc"] == fitted.report["metrics"]["auc"]
    assert set(meta["baseline_metrics"]) == {"naive_bayes", "logistic_regression"}
    assert meta["data_range"]["n_train"] == 3200 and meta["data_range"]["n_test"] == 800

    loaded = ScoringModel.load(out)
    assert loaded.feature_names == fitted.model.feature_names
    assert loaded.input_columns == fitted.model.input_columns
    assert loaded.positive_label == "won" and loaded.target == "outcome"
    np.testing.assert_array_equal(loaded.predict_proba(leads), fitted.model.predict_proba(leads))
    matrix = loaded.transform(leads)
    for name, baseline in loaded.baselines.items():
        np.testing.assert_allclose(baseline.predict_proba(matrix), fitted.model.baselines[name].predict_proba(matrix))
    # Saving over an older model replaces it; nothing else is left beside it.
    fitted.model.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_explanations_add_up_to_the_margin(fitted: FitResult, leads: pd.DataFrame) -> None:
    model = fitted.model
    rows = leads.head(30).copy()
    rows.loc[rows.index[0], "age"] = np.nan
    explanations = model.explain(rows, top=100)
    raw = model.predict_raw(model.transform(rows))
    scores = model.predict_proba(rows)
    for i, ex in enumerate(explanations):
        total = ex.base + sum(f.contribution for f in ex.up + ex.down)
        assert total == pytest.approx(ex.margin, abs=1e-4)
        assert ex.margin == pytest.approx(float(_logit(raw[i])), abs=1e-3)
        assert ex.score == scores[i]
        columns = [f.column for f in ex.up + ex.down]
        assert len(columns) == len(set(columns))  # the one-hot levels of `job` are one factor
        assert all(f.contribution > 0 for f in ex.up) and all(f.contribution < 0 for f in ex.down)
    texts = [f.text for ex in explanations for f in ex.up + ex.down]
    visits = [t for t in texts if "website visits" in t]
    assert visits and all(" website visits (visits = " in t for t in visits)
    assert any(t.startswith("no value for age ") for t in texts)
    assert any(t.startswith("contact: cellular ") or t.startswith("contact: telephone ") for t in texts)
    assert any(t.startswith("what notes says (") for t in texts)
    top3 = model.explain(rows.head(3))
    assert all(len(ex.up) <= 3 and len(ex.down) <= 3 for ex in top3)


def test_time_split_holds_out_the_latest_leads() -> None:
    result = fit_model(make_leads(3000, seed=0), target="outcome", time_col="created", params=FAST)
    report = result.report
    assert report["split"]["method"] == "time" and report["split"]["time_col"] == "created"
    span = report["data_range"]
    assert span["from"] == "2024-01-01T00:00:00" and span["to"] <= "2024-12-31T00:00:00"
    assert span["test_from"] >= span["train_to"]
    # The time column gives seasonal parts, never an absolute date the model could anchor on.
    assert [f for f in result.model.feature_names if f.startswith("created:")] == ["created:month", "created:dow"]
    assert report["metrics"]["auc"] > 0.72


def test_chinese_gbk_semicolon_csv_with_a_leaky_column(tmp_path: Path) -> None:
    leads = make_leads(2000, seed=1)
    won = leads["outcome"] == "won"
    rng = np.random.default_rng(5)
    chinese = pd.DataFrame(
        {
            "年龄": leads["age"],
            "职业": leads["job"],
            "联系方式": leads["contact"],
            "有贷款": np.where(leads["has_loan"] == "yes", "是", "否"),
            "访问次数": leads["visits"],
            "收入": leads["income"],
            "创建日期": leads["created"],
            "通话时长": np.where(won, rng.integers(300, 900, len(leads)), rng.integers(0, 200, len(leads))),
            "是否成交": np.where(won, "是", "否"),
        }
    )
    path = write_csv(chinese, tmp_path / "线索.csv", sep=";", encoding="gbk")
    frame = read_table(path)
    result = fit_model(frame, target="是否成交", params=FAST)
    assert result.model.positive_label == "是"
    kinds = result.model.meta["column_kinds"]
    assert kinds["收入"] == "numeric" and kinds["有贷款"] == "boolean" and kinds["创建日期"] == "datetime"
    leaks = [w for w in result.warnings if "'通话时长'" in w]
    assert len(leaks) == 2  # it predicts the outcome alone, and its name says "duration"
    assert any("AUC" in w and "--drop '通话时长'" in w for w in leaks)
    assert result.report["metrics"]["auc"] > 0.9  # the leak at work: why the warning matters
    assert check_leakage(frame, target="是否成交", drop=["通话时长"]) == []


def test_wide_numeric_feature_store_frame() -> None:
    rng = np.random.default_rng(0)
    n, k = 2000, 200
    values = rng.poisson(0.3, (n, k)).astype(np.float32)
    values[rng.random((n, k)) < 0.4] = np.nan
    signal = np.nan_to_num(values[:, 0]) + np.nan_to_num(values[:, 1]) * 2
    y = rng.random(n) < 1 / (1 + np.exp(-(signal - 1.0) * 1.5))
    frame = pd.DataFrame(values, columns=[f"feature_{i}" for i in range(k)])
    frame["label"] = y.astype(int)
    result = fit_model(frame, target="label", params=FAST, feature_labels={"feature_1": "connected calls"})
    assert len(result.model.feature_names) == k
    assert result.report["metrics"]["auc"] > 0.7
    assert {c["column"] for c in result.report["top_columns"][:2]} == {"feature_0", "feature_1"}
    ex = result.model.explain(frame.head(50))
    assert any("connected calls (feature_1 = " in f.text for e in ex for f in e.up + e.down)


def test_evaluate_model_on_new_rows(fitted: FitResult) -> None:
    fresh = make_leads(1500, seed=7)
    result = evaluate_model(fitted.model, fresh, target="outcome")
    assert set(result) >= METRIC_KEYS
    assert set(result["baselines"]) == {"naive_bayes", "logistic_regression"}
    assert result["n"] == 1500 and result["positives"] == int((fresh["outcome"] == "won").sum())
    assert result["auc"] > 0.78
    assert result["auc"] > max(b["auc"] for b in result["baselines"].values())


# -- bad input: each a ScoringDataError subclass with a message that says what to do


def test_target_not_found_names_close_matches(leads: pd.DataFrame) -> None:
    with pytest.raises(TargetNotFoundError, match=r"target column 'outcom' is not in the data; did you mean 'outcome'"):
        fit_model(leads, target="outcom")
    with pytest.raises(TargetNotFoundError, match="did you mean 'outcome'"):
        fit_model(leads, target="Outcome")
    with pytest.raises(ScoringDataError, match="time column 'when' is not in the data"):
        fit_model(leads, target="outcome", time_col="when")


def test_target_with_one_or_many_values(leads: pd.DataFrame) -> None:
    with pytest.raises(SingleClassTargetError, match="only one value"):
        fit_model(leads.assign(outcome="won"), target="outcome")
    stages = np.where(leads["outcome"] == "won", "won", np.where(leads["age"] > 50, "lost", "open"))
    counts = r"3 values \('won': 1,548, 'open': 1,425, 'lost': 1,027\); scoring needs exactly two"
    with pytest.raises(MultiClassTargetError, match=counts):
        fit_model(leads.assign(outcome=stages), target="outcome")


def test_empty_columns_are_dropped_with_a_warning_and_none_left_is_an_error(leads: pd.DataFrame) -> None:
    result = fit_model(leads[["age", "visits", "outcome"]][:1000].assign(blank=None), target="outcome", params=TINY)
    assert "column 'blank' is empty (no values in the training rows): dropped" in result.warnings
    assert result.model.input_columns == ["age", "visits"]
    with pytest.raises(NoFeaturesError, match=r"no column is left to learn from \('blank': empty"):
        fit_model(leads[["outcome"]].assign(blank=None), target="outcome")


def test_unparseable_numbers_warn_and_train(leads: pd.DataFrame) -> None:
    frame = leads[:1000].copy()
    frame["income"] = frame["income"].astype(object)
    frame.loc[[5, 9, 200], "income"] = ["unknown", "n.a.", "unknown"]
    result = fit_model(frame, target="outcome", params=TINY)
    assert result.model.meta["column_kinds"]["income"] == "numeric"
    assert [w for w in result.warnings if w.startswith("column 'income': 3 values are not numbers")]


def test_evaluate_refuses_data_with_another_schema(fitted: FitResult, leads: pd.DataFrame) -> None:
    with pytest.raises(ModelSchemaError, match=r"missing columns 'job', 'notes'"):
        evaluate_model(fitted.model, leads.drop(columns=["job", "notes"]), target="outcome")
    changed = leads.assign(age=["old"] * len(leads))
    with pytest.raises(ModelSchemaError, match=r"'age' \(was numeric, now mostly other values\)"):
        evaluate_model(fitted.model, changed, target="outcome")
    with pytest.raises(UnknownLabelError, match="'maybe'"):
        evaluate_model(fitted.model, leads.assign(outcome="maybe"), target="outcome")


def test_missing_or_corrupt_model_directories(fitted: FitResult, tmp_path: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="no model directory at"):
        ScoringModel.load(tmp_path / "nothing")
    out = tmp_path / "model"
    fitted.model.save(out)
    (out / "encoder.json").write_text("{not json")
    with pytest.raises(ModelDirectoryError, match=r"is corrupt \(encoder.json"):
        ScoringModel.load(out)
    (out / "model.json").unlink()
    with pytest.raises(ModelDirectoryError, match=r"model\.json missing"):
        ScoringModel.load(out)


def test_empty_csv(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(EmptyDataError, match="is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    with pytest.raises(EmptyDataError, match="no data rows"):
        read_table(tmp_path / "header.csv")


def test_a_failed_save_leaves_nothing(fitted: FitResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "plot_calibration", broken)
    with pytest.raises(OSError, match="disk full"):
        fitted.model.save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(ModelDirectoryError, match="is not a leadpilot model directory"):
        fitted.model.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
