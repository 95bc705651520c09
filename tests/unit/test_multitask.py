"""Multi-task rankers: every architecture learns, ESMM undoes selection bias, ONNX equals eager, bad input is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="the multi-task ranker needs PyTorch (torch==2.13.0 CPU)")

from sklearn.metrics import roc_auc_score

from leadpilot.distribution.multitask import MultiTaskError, MultiTaskRanker, OnnxRanker

SMALL: dict[str, Any] = {
    "expert_units": (16,),
    "tower_units": (8,),
    "n_experts": 3,
    "embedding_dim": 4,
    "batch_size": 128,
    "learning_rate": 3e-3,
    "threads": 1,
}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _two_tasks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numeric + categorical inputs and two related tasks with known logits (shared x0, own x1 / x2, a category)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    c = np.stack([rng.integers(0, 5, n), rng.integers(0, 3, n)], axis=1)
    effect = np.array([-1.5, -0.5, 0.0, 0.5, 1.5])
    z0 = 1.5 * x[:, 0] + 1.2 * x[:, 1] + effect[c[:, 0]]
    z1 = 1.5 * x[:, 0] - 1.2 * x[:, 2] + x[:, 3] * x[:, 4] + (c[:, 1] == 2) * 1.0
    probs = np.stack([_sigmoid(z0), _sigmoid(z1)], axis=1)
    y = (rng.random((n, 2)) < probs).astype(np.float64)
    return x, c, y, probs


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return _two_tasks(6_000, 0)


@pytest.mark.parametrize("arch", ["single", "shared_bottom", "mmoe", "ple"])
def test_each_architecture_learns_and_onnx_equals_eager(
    arch: str, data: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    x, c, y, probs = data
    train, test = slice(0, 4_500), slice(4_500, None)
    y_train = y[train].copy()
    y_train[::2, 1] = np.nan  # half of task 1's labels unobserved: masked out of its loss
    model = MultiTaskRanker(arch=arch, epochs=8, seed=1, **SMALL).fit(
        x[train], y_train, X_cat=c[train], cat_cardinalities=[5, 3]
    )
    assert model.n_features_in_ == 6 and model.cat_cardinalities_ == [5, 3]
    assert 1 <= model.best_epoch_ <= model.n_epochs_ <= 8 and len(model.history_) == model.n_epochs_
    got = model.predict_proba(x[test], X_cat=c[test])
    assert got.shape == (1_500, 2) and got.dtype == np.float32
    for task in range(2):
        best = roc_auc_score(y[test, task], probs[test, task])  # what the true probability achieves
        auc = roc_auc_score(y[test, task], got[:, task])
        assert auc > 0.75 and auc > best - 0.05, (arch, task, auc, best)

    # One ONNX graph, served by ONNX Runtime, gives the eager probabilities, also for unseen codes and NaN.
    x_odd, c_odd = x[test].copy(), c[test].copy()
    x_odd[::5, 0] = np.nan
    c_odd[::7, 0] = 9  # a code never seen in training: the zero "unknown" embedding
    c_odd[::11, 1] = -1
    path = model.export_onnx(tmp_path / f"{arch}.onnx")
    ranker = OnnxRanker(path, threads=1)
    assert ranker.tasks == ["task_0", "task_1"] and ranker.arch == arch
    eager = model.predict_proba(x_odd, X_cat=c_odd)
    served = ranker.predict_proba(x_odd, X_cat=c_odd)
    assert np.isfinite(eager).all()
    assert np.abs(served - eager).max() < 1e-5
    assert ranker.predict_proba(x[:0], X_cat=c[:0]).shape == (0, 2)


def test_esmm_recovers_conversion_given_transfer_better_than_naive_training() -> None:
    """Conversion after transfer falls with x0 while transfer rises with it: only ESMM's p1 sees that."""
    rng = np.random.default_rng(3)
    n = 12_000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    p_transfer = _sigmoid(2.0 * x[:, 0] - 0.5)
    p_cvr = _sigmoid(1.5 * x[:, 1] - 1.0 * x[:, 0] - 0.3)
    transferred = rng.random(n) < p_transfer
    converted = transferred & (rng.random(n) < p_cvr)
    y = np.stack([transferred, converted], axis=1).astype(np.float64)
    params: dict[str, Any] = {**SMALL, "epochs": 10, "seed": 0}

    esmm = MultiTaskRanker(arch="mmoe", esmm=True, **params).fit(x, y)
    # naive: "converted" learned on every exposure as if it were the conversion rate
    naive = MultiTaskRanker(arch="mmoe", **params).fit(x, y)
    x_new = rng.normal(size=(4_000, 4)).astype(np.float32)
    truth = _sigmoid(1.5 * x_new[:, 1] - 1.0 * x_new[:, 0] - 0.3)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    esmm_probs = esmm.predict_proba(x_new)
    assert esmm.task_names() == ["p_transfer", "p_convert_given_transfer"]
    esmm_fit = corr(esmm_probs[:, 1], truth)
    naive_fit = corr(naive.predict_proba(x_new)[:, 1], truth)
    assert esmm_fit > 0.85, esmm_fit
    assert esmm_fit > naive_fit + 0.2, (esmm_fit, naive_fit)
    assert corr(esmm_probs[:, 0], _sigmoid(2.0 * x_new[:, 0] - 0.5)) > 0.9
    ctcvr = esmm.predict_ctcvr(x_new)
    assert np.allclose(ctcvr, esmm_probs[:, 0] * esmm_probs[:, 1])
    # Conversion labels of non-transferred rows may be left unobserved: they cannot have converted.
    y_nan = y.copy()
    y_nan[~transferred, 1] = np.nan
    again = MultiTaskRanker(arch="mmoe", esmm=True, **params).fit(x, y_nan)
    assert np.array_equal(again.predict_proba(x_new), esmm_probs)


def test_training_is_deterministic_for_a_seed(data: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    x, c, y, _ = data
    kwargs: dict[str, Any] = {**SMALL, "arch": "ple", "epochs": 3}
    first = MultiTaskRanker(seed=7, **kwargs).fit(x[:2_000], y[:2_000], X_cat=c[:2_000])
    second = MultiTaskRanker(seed=7, **kwargs).fit(x[:2_000], y[:2_000], X_cat=c[:2_000])
    other = MultiTaskRanker(seed=8, **kwargs).fit(x[:2_000], y[:2_000], X_cat=c[:2_000])
    a = first.predict_proba(x[2_000:3_000], X_cat=c[2_000:3_000])
    assert np.array_equal(a, second.predict_proba(x[2_000:3_000], X_cat=c[2_000:3_000]))
    assert not np.array_equal(a, other.predict_proba(x[2_000:3_000], X_cat=c[2_000:3_000]))
    assert first.cat_cardinalities_ == [5, 3]  # inferred as max code + 1
    # numeric-only models export a graph with the single input x_num (here: deeper experts, 3 PLE levels)
    deep = {**kwargs, "expert_units": (16, 8), "ple_levels": 3, "tower_units": ()}
    numeric = MultiTaskRanker(seed=0, **deep).fit(x[:2_000], y[:2_000])
    path = numeric.export_onnx(tmp_path / "numeric.onnx")
    served = OnnxRanker(path).predict_proba(x[:500])
    assert np.abs(served - numeric.predict_proba(x[:500])).max() < 1e-5
    # save / load gives back the same model
    loaded = MultiTaskRanker.load(first.save(tmp_path / "saved"))
    assert np.array_equal(loaded.predict_proba(x[2_000:3_000], X_cat=c[2_000:3_000]), a)
    assert loaded.get_params() == first.get_params() and loaded.best_epoch_ == first.best_epoch_
    (tmp_path / "saved" / "weights.pt").write_bytes(b"damaged")
    with pytest.raises(MultiTaskError, match="does not hold this model's weights"):
        MultiTaskRanker.load(tmp_path / "saved")
    with pytest.raises(MultiTaskError, match="holds no saved MultiTaskRanker"):
        MultiTaskRanker.load(tmp_path / "nothing")
    assert first.get_params()["seed"] == 7 and first.set_params(seed=9).seed == 9


def test_bad_inputs_are_named(data: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    x, c, y, _ = data
    x, c, y = x[:300], c[:300], y[:300]
    quick: dict[str, Any] = {**SMALL, "epochs": 1}
    with pytest.raises(MultiTaskError, match="unknown arch 'moe'"):
        MultiTaskRanker(arch="moe").fit(x, y)
    with pytest.raises(MultiTaskError, match="esmm=True needs n_tasks=2"):
        MultiTaskRanker(esmm=True, n_tasks=3).fit(x, np.ones((300, 3)))
    with pytest.raises(MultiTaskError, match=r"Y must have shape \(rows, 2\)"):
        MultiTaskRanker(**quick).fit(x, y[:, 0])
    with pytest.raises(MultiTaskError, match="Y has 299 rows but X_num has 300"):
        MultiTaskRanker(**quick).fit(x, y[:299])
    bad = y.copy()
    bad[17, 1] = 2
    with pytest.raises(MultiTaskError, match=r"Y row 17, task 1 is 2\.0: labels must be 0, 1 or NaN"):
        MultiTaskRanker(**quick).fit(x, bad)
    one_class = y.copy()
    one_class[:, 0] = 1
    with pytest.raises(MultiTaskError, match=r"task 0 has only class \[1\]"):
        MultiTaskRanker(**quick).fit(x, one_class)
    leaky = y.copy()
    leaky[5] = [0, 1]
    with pytest.raises(MultiTaskError, match=r"Y row 5 is converted .* but not transferred"):
        MultiTaskRanker(esmm=True, **quick).fit(x, leaky)
    with pytest.raises(MultiTaskError, match="X_num must be a 2-D"):
        MultiTaskRanker(**quick).fit(x[:, 0], y)
    inf = x.copy()
    inf[3, 2] = np.inf
    with pytest.raises(MultiTaskError, match="X_num row 3, column 2 is infinite"):
        MultiTaskRanker(**quick).fit(inf, y)
    with pytest.raises(MultiTaskError, match="X_cat has 299 rows but X_num has 300"):
        MultiTaskRanker(**quick).fit(x, y, X_cat=c[:299])
    with pytest.raises(MultiTaskError, match=r"X_cat row \d+, column 0 has code 4, outside \[0, 4\)"):
        MultiTaskRanker(**quick).fit(x, y, X_cat=c, cat_cardinalities=[4, 3])
    with pytest.raises(MultiTaskError, match="cat_cardinalities has 1 entries but X_cat has 2 columns"):
        MultiTaskRanker(**quick).fit(x, y, X_cat=c, cat_cardinalities=[5])
    with pytest.raises(MultiTaskError, match="not fitted yet"):
        MultiTaskRanker().predict_proba(x)
    model = MultiTaskRanker(**quick).fit(x, y, X_cat=c)
    with pytest.raises(MultiTaskError, match="X_num has 5 columns but the model was fitted on 6"):
        model.predict_proba(x[:, :5], X_cat=c)
    with pytest.raises(MultiTaskError, match="fitted with 2 categorical columns: pass X_cat"):
        model.predict_proba(x)
    with pytest.raises(MultiTaskError, match="predict_ctcvr is for esmm=True models"):
        model.predict_ctcvr(x, X_cat=c)
    with pytest.raises(MultiTaskError, match="no ONNX model at"):
        OnnxRanker(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a graph")
    with pytest.raises(MultiTaskError, match="not a readable ONNX model"):
        OnnxRanker(corrupt)
    ranker = OnnxRanker(model.export_onnx(tmp_path / "m.onnx"))
    with pytest.raises(MultiTaskError, match="X_cat has 1 columns but the model was fitted on 2"):
        ranker.predict_proba(x, X_cat=c[:, :1])
