"""Baselines every model is measured against: Odoo-style naive Bayes and a standardised logistic regression."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from leadpilot.models.tabular import TabularEncoder


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))


class NaiveBayesBaseline:
    """Odoo's predictive lead scoring: per column, how often each value occurs among won vs lost rows.

    Each input column becomes one discrete value per row: its one-hot level for categories (rare, unseen
    and missing each a value of their own), else the decile bin of its first feature (the number itself,
    a date's age, a text's length; missing is a bin). The score multiplies the columns' likelihood ratios
    as if independent, with Laplace smoothing: p(won | row) = P(won) Π P(v|won) / (that + P(lost) Π P(v|lost)).
    """

    def __init__(self, alpha: float = 1.0, bins: int = 10) -> None:
        self.alpha = alpha
        self.bins = bins

    def fit(self, matrix: np.ndarray, y: np.ndarray, encoder: TabularEncoder) -> NaiveBayesBaseline:
        """Learn the value codes and their smoothed won/lost log-likelihood ratios from training rows."""
        self.columns_: list[dict[str, Any]] = []
        y = np.asarray(y).astype(bool)
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        self.prior_ = float(np.log((n_pos + self.alpha) / (n_neg + self.alpha)))
        for spec, idx in encoder.groups():
            if spec.kind == "categorical":
                width = len(spec.levels) + spec.other + spec.missing
                column: dict[str, Any] = {"name": spec.name, "onehot": [int(i) for i in idx[:width]]}
            else:
                values = matrix[:, idx[0]].astype(np.float64)
                present = values[~np.isnan(values)]
                qs = np.linspace(0, 1, self.bins + 1)[1:-1]
                edges = np.unique(np.quantile(present, qs)) if len(present) else np.array([])
                column = {"name": spec.name, "feature": int(idx[0]), "edges": edges.tolist()}
            codes, size = self._codes(column, matrix)
            won = np.bincount(codes[y], minlength=size)
            lost = np.bincount(codes[~y], minlength=size)
            ratio = np.log((won + self.alpha) / (n_pos + self.alpha * size)) - np.log(
                (lost + self.alpha) / (n_neg + self.alpha * size)
            )
            column["log_ratio"] = ratio.tolist()
            self.columns_.append(column)
        return self

    @staticmethod
    def _codes(column: dict[str, Any], matrix: np.ndarray) -> tuple[np.ndarray, int]:
        if "onehot" in column:
            hot = matrix[:, column["onehot"]]
            width = len(column["onehot"])
            return np.where(np.nan_to_num(hot).max(axis=1) > 0, hot.argmax(axis=1), width), width + 1
        values = matrix[:, column["feature"]].astype(np.float64)
        edges = np.asarray(column["edges"], dtype=np.float64)
        codes = np.searchsorted(edges, values, side="right")
        return np.where(np.isnan(values), len(edges) + 1, codes), len(edges) + 2

    def decision_function(self, matrix: np.ndarray) -> np.ndarray:
        """Log-odds of the positive class."""
        z = np.full(matrix.shape[0], self.prior_)
        for column in self.columns_:
            codes, _ = self._codes(column, matrix)
            z += np.asarray(column["log_ratio"])[codes]
        return z

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """p(positive) per row."""
        return _sigmoid(self.decision_function(matrix))

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "bins": self.bins, "prior": self.prior_, "columns": self.columns_}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NaiveBayesBaseline:
        model = cls(alpha=float(data["alpha"]), bins=int(data["bins"]))
        model.prior_ = float(data["prior"])
        model.columns_ = list(data["columns"])
        return model


class LogisticBaseline:
    """Logistic regression on the encoded matrix: missing values as the training median, standardised, clipped."""

    def __init__(self, c: float = 1.0, clip: float = 10.0, seed: int = 0) -> None:
        self.c = c
        self.clip = clip
        self.seed = seed

    def _standardise(self, matrix: np.ndarray) -> np.ndarray:
        z = np.where(np.isnan(matrix), self.median_, matrix)
        z = (z - self.mean_) / self.scale_
        return np.clip(z, -self.clip, self.clip, out=z)

    def fit(self, matrix: np.ndarray, y: np.ndarray) -> LogisticBaseline:
        """Learn medians, scales and coefficients from training rows."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no median
            median = np.nanmedian(matrix, axis=0)
        self.median_ = np.nan_to_num(median).astype(np.float32)
        filled = np.where(np.isnan(matrix), self.median_, matrix)
        self.mean_ = filled.mean(axis=0, dtype=np.float64).astype(np.float32)
        scale = filled.std(axis=0, dtype=np.float64)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
        del filled
        model = LogisticRegression(C=self.c, max_iter=300, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(self._standardise(matrix), np.asarray(y).astype(np.int64))
        self.coef_ = model.coef_.ravel().astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        return self

    def decision_function(self, matrix: np.ndarray) -> np.ndarray:
        """Log-odds of the positive class."""
        return self._standardise(matrix).astype(np.float64) @ self.coef_ + self.intercept_

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """p(positive) per row."""
        return _sigmoid(self.decision_function(matrix))

    def to_json(self) -> dict[str, Any]:
        return {
            "c": self.c,
            "clip": self.clip,
            "median": self.median_.tolist(),
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogisticBaseline:
        model = cls(c=float(data["c"]), clip=float(data["clip"]))
        model.median_ = np.asarray(data["median"], dtype=np.float32)
        model.mean_ = np.asarray(data["mean"], dtype=np.float32)
        model.scale_ = np.asarray(data["scale"], dtype=np.float32)
        model.coef_ = np.asarray(data["coef"], dtype=np.float64)
        model.intercept_ = float(data["intercept"])
        return model


BASELINES = ("naive_bayes", "logistic_regression")


def fit_baselines(matrix: np.ndarray, y: np.ndarray, encoder: TabularEncoder, *, seed: int = 0) -> dict[str, Any]:
    """Both baselines fitted on the same training rows."""
    return {
        "naive_bayes": NaiveBayesBaseline().fit(matrix, y, encoder),
        "logistic_regression": LogisticBaseline(seed=seed).fit(matrix, y),
    }


def baselines_to_json(baselines: dict[str, Any]) -> dict[str, Any]:
    return {name: model.to_json() for name, model in baselines.items()}


def baselines_from_json(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "naive_bayes": NaiveBayesBaseline.from_json(data["naive_bayes"]),
        "logistic_regression": LogisticBaseline.from_json(data["logistic_regression"]),
    }
