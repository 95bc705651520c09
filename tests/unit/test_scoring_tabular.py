"""Bring-your-own-data tables: reading any CSV, type inference, labels, the encoder, leakage checks and splits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leadpilot.models.tabular import (
    MultiClassTargetError,
    PositiveLabelError,
    SingleClassTargetError,
    TabularEncoder,
    TooFewRowsError,
    detect_delimiter,
    find_leakage,
    parse_labels,
    parse_numbers,
    read_table,
    split_rows,
)

JOBS = ["admin.", "technician", "retired", "student", "services", "blue-collar"]
WORDS = ["price", "demo", "later", "budget", "call", "email", "maybe", "team", "trial", "quote"]


def make_leads(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Synthetic leads whose outcome has a known, partly non-linear signal (interactions, thresholds, text)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 76, n)
    job = rng.choice(JOBS, n)
    contact = rng.choice(["cellular", "telephone"], n)
    loan = rng.choice(["yes", "no"], n)
    visits = rng.poisson(2.0, n)
    notes = [
        " ".join(rng.choice(WORDS, rng.integers(3, 10))) + (" urgent" if rng.random() < 0.3 else "") for _ in range(n)
    ]
    urgent = np.array(["urgent" in t for t in notes])
    z = (
        -3.2
        + 2.5 * (visits >= 3)
        + 2.5 * ((job == "retired") & (age > 60))
        + 2.5 * ((contact == "cellular") != (loan == "yes"))  # an interaction no additive model can see
        + 1.5 * urgent
        - 1.0 * (job == "student")
    )
    won = rng.random(n) < 1 / (1 + np.exp(-z))
    created = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 365, n)), unit="D")
    income = rng.normal(60_000, 20_000, n)
    return pd.DataFrame(
        {
            "lead_id": np.arange(10_000, 10_000 + n),
            "age": age,
            "job": job,
            "contact": contact,
            "has_loan": loan,
            "visits": visits,
            "income": [f"{v:,.1f}" for v in income],
            "created": created.strftime("%Y-%m-%d"),
            "notes": notes,
            "outcome": np.where(won, "won", "lost"),
        }
    )


def write_csv(frame: pd.DataFrame, path: Path, *, sep: str = ",", encoding: str = "utf-8") -> Path:
    path.write_bytes(frame.to_csv(index=False, sep=sep).encode(encoding))
    return path


# -- reading


def test_reads_chinese_headers_semicolons_gbk_and_thousands_separators(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "年龄": [30, 41, 52],
            "职业": ["工程师", "销售", "退休"],
            "收入": ["1,234.5", "12,000.0", "980.0"],
            "是否成交": ["是", "否", "否"],
        }
    )
    path = write_csv(frame, tmp_path / "leads.csv", sep=";", encoding="gbk")
    read = read_table(path)
    assert list(read.columns) == ["年龄", "职业", "收入", "是否成交"]
    assert read["职业"].tolist() == ["工程师", "销售", "退休"]
    assert parse_numbers(read["收入"]).tolist() == [1234.5, 12000.0, 980.0]


def test_reads_bom_and_tabs_and_quoted_commas(tmp_path: Path) -> None:
    path = tmp_path / "bom.tsv"
    path.write_bytes('\ufeffname\tnote\ty\nA\t"a, b, c"\tyes\nB\tplain\tno\n'.encode())
    read = read_table(path)
    assert list(read.columns) == ["name", "note", "y"]
    assert read["note"].tolist() == ["a, b, c", "plain"]
    # Commas inside quotes do not make the comma the delimiter.
    assert detect_delimiter('a;b;c\n1;"x, y, z, w";2\n3;"q";4\n') == ";"


def test_parse_numbers_keeps_what_is_a_number() -> None:
    values = pd.Series(["1,234.5", "3,5", "¥12", "7", None, "abc", "1 000"])
    parsed = parse_numbers(values)
    assert parsed.tolist()[:4] == [1234.5, 3.5, 12.0, 7.0]
    assert np.isnan(parsed.iloc[4]) and np.isnan(parsed.iloc[5])
    assert parsed.iloc[6] == 1000.0


# -- labels


@pytest.mark.parametrize(
    ("values", "positive"),
    [
        (["yes", "no", "no", "no"], "yes"),
        (["no", "yes", "yes", "yes"], "yes"),  # the obvious positive wins even when it is the common one
        ([1, 0, 0, 1], "1"),
        ([True, False, False, False], "true"),
        (["Y", "N", "N", "N"], "Y"),
        (["是", "否", "否", "否"], "是"),
        (["won", "lost", "lost", "won"], "won"),
        (["gold", "bronze", "bronze", "bronze"], "gold"),  # two arbitrary strings: the rarer
    ],
)
def test_positive_class(values: list[object], positive: str) -> None:
    labels = parse_labels(pd.Series(values), target="y")
    assert labels.positive == positive
    assert labels.y.tolist() == [int(str(v).lower() == positive.lower()) for v in values]


def test_positive_override_and_missing_labels() -> None:
    labels = parse_labels(pd.Series(["gold", "bronze", None, "bronze"]), target="tier", positive="BRONZE")
    assert labels.positive == "bronze"
    assert labels.labelled.tolist() == [True, True, False, True]
    assert labels.y.tolist() == [0, 1, 1]
    with pytest.raises(PositiveLabelError, match="'silver' is not a value of 'tier'"):
        parse_labels(pd.Series(["gold", "bronze"]), target="tier", positive="silver")


def test_bad_targets_say_what_is_wrong() -> None:
    with pytest.raises(SingleClassTargetError, match=r"only one value \('yes' in all 3"):
        parse_labels(pd.Series(["yes", "yes", "yes"]), target="y")
    with pytest.raises(MultiClassTargetError, match=r"3 values \('open': 3, 'won': 2, 'lost': 1\)"):
        parse_labels(pd.Series(["open", "won", "open", "lost", "won", "open"]), target="stage")


# -- the encoder


def test_infers_every_kind_with_readable_feature_names() -> None:
    frame = make_leads(400)
    frame["empty"] = np.nan
    frame["same"] = "x"
    encoder = TabularEncoder(time_col=None).fit(frame.drop(columns=["outcome"]))
    kinds = {s.name: s.kind for s in encoder.columns_}
    assert kinds == {
        "age": "numeric",
        "job": "categorical",
        "contact": "categorical",
        "has_loan": "boolean",
        "visits": "numeric",
        "income": "numeric",
        "created": "datetime",
        "notes": "text",
    }
    assert set(encoder.dropped_) == {"lead_id", "empty", "same"}
    assert "an id" in encoder.dropped_["lead_id"]
    names = encoder.feature_names_
    assert {"age", "job=admin.", "job=retired", "has_loan", "income", "notes:len", "notes:tokens"} <= set(names)
    assert {"created:age_days", "created:month", "created:dow"} <= set(names)
    matrix = encoder.transform(frame)
    assert matrix.dtype == np.float32 and matrix.shape == (400, len(names))
    first = dict(zip(names, matrix[0], strict=True))
    assert first["age"] == frame["age"][0]
    assert first[f"job={frame['job'][0]}"] == 1.0
    assert first["has_loan"] == (1.0 if frame["has_loan"][0] == "yes" else 0.0)
    assert first["notes:tokens"] == len(frame["notes"][0].split())
    assert np.isclose(first["income"], float(frame["income"][0].replace(",", "")))


def test_unseen_levels_go_to_other_and_the_encoder_round_trips_through_json() -> None:
    frame = pd.DataFrame({"city": ["a"] * 10 + ["b"] * 10 + ["c"] * 2, "n": np.arange(22.0)})
    encoder = TabularEncoder(min_level_count=5).fit(frame)
    assert encoder.feature_names_ == ["city=a", "city=b", "city=(other)", "n"]
    new = pd.DataFrame({"city": ["b", "zzz", None], "n": [1.0, 2.0, None]})
    matrix = encoder.transform(new)
    np.testing.assert_array_equal(matrix[:, :3], [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    again = TabularEncoder.from_json(encoder.to_json())
    np.testing.assert_array_equal(again.transform(new), matrix)
    assert again.feature_names_ == encoder.feature_names_


def test_unparseable_numbers_become_missing_with_a_warning(tmp_path: Path) -> None:
    frame = pd.DataFrame({"amount": [str(v) for v in range(40)], "y": ["yes", "no"] * 20})
    frame.loc[[3, 17], "amount"] = ["lots", "??"]
    read = read_table(write_csv(frame, tmp_path / "a.csv"))
    encoder = TabularEncoder().fit(read[["amount"]])
    assert encoder.columns_[0].kind == "numeric"
    warnings: list[str] = []
    matrix = encoder.transform(read[["amount"]], warnings=warnings)
    assert np.isnan(matrix[[3, 17], 0]).all() and matrix[4, 0] == 4
    assert warnings == ["column 'amount': 2 values are not numbers ('lots', '??'; line 5, 19), treated as missing"]


def test_wide_numeric_frames_encode_fast() -> None:
    # Feature-store frames: thousands of sparse numeric columns, mostly zeros or missing.
    rng = np.random.default_rng(0)
    n, k = 5000, 2000
    values = rng.poisson(0.05, (n, k)).astype(np.float32)
    values[rng.random((n, k)) < 0.3] = np.nan
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(k)])
    started = time.perf_counter()
    encoder = TabularEncoder().fit(frame)
    matrix = encoder.transform(frame)
    elapsed = time.perf_counter() - started
    assert matrix.shape == (n, k)
    np.testing.assert_array_equal(matrix, values)
    assert elapsed < 10, elapsed  # a per-cell Python loop would take minutes


# -- leakage


def test_leakage_checks_name_the_columns() -> None:
    frame = make_leads(2000, seed=3)
    won = (frame["outcome"] == "won").to_numpy()
    rng = np.random.default_rng(1)
    frame["final_amount"] = np.where(won, rng.uniform(1000, 5000, len(frame)), rng.uniform(0, 50, len(frame)))
    frame["call_duration"] = rng.exponential(100, len(frame))  # not predictive, but its name says "after"
    frame["contract_date"] = np.where(won, "2024-06-01", None)  # only filled in for won leads
    frame["通话结果"] = rng.choice(["接通", "未接通"], len(frame))
    labels = parse_labels(frame.pop("outcome"), target="outcome")
    encoder = TabularEncoder().fit(frame)
    findings = find_leakage(
        encoder, encoder.transform(frame), labels.y, target="outcome", positive="won", negative="lost"
    )
    by_column: dict[str, set[str]] = {}
    for f in findings:
        by_column.setdefault(f.column, set()).add(f.reason)
    assert by_column == {
        "final_amount": {"predicts_alone"},
        "call_duration": {"name"},
        "contract_date": {"predicts_alone", "missing_for_one_class"},
        "通话结果": {"name"},
    }
    amount = next(f for f in findings if f.column == "final_amount")
    assert amount.auc is not None and amount.auc >= 0.95
    assert "AUC" in amount.message and "--drop final_amount" in amount.message
    missing = next(f for f in findings if f.reason == "missing_for_one_class")
    assert "empty in 100% of the 'lost' rows but in only 0.0% of the 'won' rows" in missing.message


def test_a_pure_category_level_is_flagged() -> None:
    n = 1000
    rng = np.random.default_rng(2)
    y = (rng.random(n) < 0.3).astype(np.int8)
    # "closed-won" only ever appears on won rows and holds most of them.
    step = np.where(y == 1, rng.choice(["closed-won", "call"], n, p=[0.8, 0.2]), rng.choice(["call", "mail"], n))
    frame = pd.DataFrame({"last_step": step, "noise": rng.normal(size=n)})
    encoder = TabularEncoder().fit(frame)
    findings = find_leakage(encoder, encoder.transform(frame), y, target="y", positive="1", negative="0")
    assert any(f.reason == "pure_level" and "'closed-won'" in f.message for f in findings)
    assert not any(f.column == "noise" for f in findings)


# -- splits


def test_time_split_holds_out_the_latest_rows_and_stratified_keeps_the_rate() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.2).astype(np.int8)
    times = rng.permutation(1000)
    split = split_rows(y, times=times)
    assert split.method == "time"
    assert times[split.test].min() > times[split.train].max()
    assert times[split.calibration].min() > times[split.fit].max()
    assert len(split.test) == 200 and len(split.train) == 800
    strat = split_rows(y, seed=3)
    assert abs(y[strat.test].mean() - y.mean()) < 0.01
    assert np.array_equal(strat.test, split_rows(y, seed=3).test)
    assert not np.array_equal(strat.test, split_rows(y, seed=4).test)
    parts = np.concatenate([strat.fit, strat.valid, strat.calibration, strat.test])
    assert sorted(parts.tolist()) == list(range(1000))


def test_too_few_rows_of_a_class() -> None:
    with pytest.raises(TooFewRowsError, match="only 5 rows of one class"):
        split_rows(np.array([1] * 5 + [0] * 200, dtype=np.int8))
