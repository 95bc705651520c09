"""Multi-task rankers (single-task, shared-bottom, MMoE, PLE) in PyTorch, ESMM training, ONNX Runtime serving.

The V2 ranker of issue #6 predicts, for a (lead, salesperson) pair, p(transfer) and p(convert | transfer).
:class:`MultiTaskRanker` is a scikit-learn style estimator over numeric columns (standardised inside the
network with statistics learned in ``fit``; NaN = missing = the training mean) and categorical integer codes
(one embedding per column; a code outside ``[0, cardinality)`` at prediction time maps to an all-zero
"unknown" embedding). Architectures:

- ``single``: one independent bottom + tower per task (no sharing);
- ``shared_bottom``: one shared bottom MLP, one tower per task;
- ``mmoe``: ``n_experts`` expert MLPs shared by all tasks, mixed per task by a softmax gate over the input
  (Ma et al., KDD 2018);
- ``ple``: ``ple_levels`` extraction layers of task-specific and shared experts; each task's gate mixes its own
  and the shared experts, the shared gate mixes all of them for the next level (Tang et al., RecSys 2020).

With ``esmm=True`` (two tasks) task 0 is p(transfer) and task 1 is p(convert | transfer): the loss is
``BCE(p0, y_transfer) + BCE(p0 * p1, y_converted)`` over every exposure, so p1 is learned from all rows and
not only from the transferred ones (no selection bias; Ma et al., SIGIR 2018).

:meth:`MultiTaskRanker.export_onnx` writes the whole network (standardisation, embeddings, experts, gates,
towers, sigmoids) as one ONNX graph with inputs ``x_num`` (float32) and ``x_cat`` (int64) and the output
``probs`` (n, n_tasks); :class:`OnnxRanker` serves it with ONNX Runtime and returns the same probabilities.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

__all__ = ["ARCHITECTURES", "MultiTaskError", "MultiTaskRanker", "OnnxRanker"]

ARCHITECTURES = ("single", "shared_bottom", "mmoe", "ple")
NUM_INPUT = "x_num"
CAT_INPUT = "x_cat"
OUTPUT_NAME = "probs"
DEFAULT_OPSET = 17
_META_PREFIX = "leadpilot_multitask_"
_PREDICT_CHUNK = 65_536
_SAVE_FORMAT = "leadpilot-multitask-ranker/1"


class MultiTaskError(ValueError):
    """Bad input or configuration for a multi-task ranker (the message says which row, column or setting)."""


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op torch threads (unchanged when None), restoring the old count."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- the network


def _mlp(n_in: int, units: Sequence[int]) -> tuple[nn.Sequential, int]:
    """Linear + ReLU layers of the given widths, and the output width."""
    layers: list[nn.Module] = []
    for width in units:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    return nn.Sequential(*layers), n_in


def _mix(experts: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs: experts (rows, E, u), gate logits (rows, E) -> (rows, u)."""
    return (experts * torch.softmax(gate_logits, dim=1).unsqueeze(-1)).sum(dim=1)


class _ExpertBank(nn.Module):
    """``n`` expert MLPs of one shape over the same input, output (rows, n, units).

    The first layer of all experts is one wide matrix product (rows, in) @ (in, n * units); deeper layers are
    batched per expert.
    """

    def __init__(self, n_in: int, units: Sequence[int], n: int) -> None:
        super().__init__()
        self.n = n
        self.first = nn.Linear(n_in, n * units[0])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        n_in = units[0]
        for width in units[1:]:
            bound = 1.0 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(n, n_in, width).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, width).uniform_(-bound, bound)))
            n_in = width
        self.n_out = n_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output for the input rows ``x`` (rows, in)."""
        h = torch.relu(self.first(x)).reshape(x.shape[0], self.n, -1)
        if len(self.weights):
            h = h.transpose(0, 1)  # (n, rows, u) for the per-expert products
            for w, b in zip(self.weights, self.biases, strict=True):
                h = torch.relu(torch.matmul(h, w) + b)
            h = h.transpose(0, 1)
        return h


class _Network(nn.Module):
    """Raw inputs -> standardise / embed -> shared or expert layers -> one tower per task -> logits."""

    num_mean: torch.Tensor
    num_scale: torch.Tensor
    cat_cards: torch.Tensor
    cat_offsets: torch.Tensor

    def __init__(
        self,
        *,
        arch: str,
        n_tasks: int,
        n_num: int,
        cardinalities: Sequence[int],
        embedding_dim: int,
        expert_units: Sequence[int],
        n_experts: int,
        n_shared_experts: int,
        n_task_experts: int,
        ple_levels: int,
        tower_units: Sequence[int],
        num_mean: np.ndarray,
        num_scale: np.ndarray,
    ) -> None:
        super().__init__()
        self.register_buffer("num_mean", torch.tensor(num_mean, dtype=torch.float32))
        self.register_buffer("num_scale", torch.tensor(num_scale, dtype=torch.float32))
        self.n_cat = len(cardinalities)
        self.n_tasks = n_tasks
        if self.n_cat:
            cards = torch.tensor(list(cardinalities), dtype=torch.int64)
            offsets = torch.cumsum(cards + 1, 0) - (cards + 1)
            self.register_buffer("cat_cards", cards)
            self.register_buffer("cat_offsets", offsets)
            self.embedding = nn.Embedding(int((cards + 1).sum()), embedding_dim)
            with torch.no_grad():  # each column's "unknown" row stays zero (it never gets a gradient)
                self.embedding.weight[offsets + cards] = 0.0
        n_in = n_num + self.n_cat * embedding_dim
        self.arch = arch
        width = n_in
        if arch == "single":
            self.bottoms = nn.ModuleList()
            for _ in range(n_tasks):
                bottom, width = _mlp(n_in, expert_units)
                self.bottoms.append(bottom)
        elif arch == "shared_bottom":
            self.bottom, width = _mlp(n_in, expert_units)
        elif arch == "mmoe":
            self.experts = _ExpertBank(n_in, expert_units, n_experts)
            self.gates = nn.ModuleList([nn.Linear(n_in, n_experts) for _ in range(n_tasks)])
            width = self.experts.n_out
        else:  # ple
            self.task_banks = nn.ModuleList()
            self.shared_banks = nn.ModuleList()
            self.task_gates = nn.ModuleList()
            self.shared_gates = nn.ModuleList()
            for level in range(ple_levels):
                self.task_banks.append(
                    nn.ModuleList([_ExpertBank(width, expert_units, n_task_experts) for _ in range(n_tasks)])
                )
                shared_bank = _ExpertBank(width, expert_units, n_shared_experts)
                self.shared_banks.append(shared_bank)
                self.task_gates.append(
                    nn.ModuleList([nn.Linear(width, n_task_experts + n_shared_experts) for _ in range(n_tasks)])
                )
                if level < ple_levels - 1:
                    self.shared_gates.append(nn.Linear(width, n_tasks * n_task_experts + n_shared_experts))
                width = shared_bank.n_out
        self.towers = nn.ModuleList()
        for _ in range(n_tasks):
            body, tower_width = _mlp(width, tower_units)
            self.towers.append(nn.Sequential(body, nn.Linear(tower_width, 1)))

    def inputs(self, x_num: torch.Tensor, x_cat: torch.Tensor | None) -> torch.Tensor:
        """Standardised numerics (NaN -> the training mean) beside the categorical embeddings."""
        z = (x_num - self.num_mean) / self.num_scale
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        if not self.n_cat or x_cat is None:
            return z
        known = (x_cat >= 0) & (x_cat < self.cat_cards)
        index = torch.where(known, x_cat, self.cat_cards.expand_as(x_cat)) + self.cat_offsets
        emb = self.embedding(index).reshape(x_cat.shape[0], -1)
        return torch.cat([z, emb], dim=1)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor | None = None) -> torch.Tensor:
        """Per-task logits (rows, n_tasks)."""
        x = self.inputs(x_num, x_cat)
        hidden: list[torch.Tensor]
        if self.arch == "single":
            hidden = [bottom(x) for bottom in self.bottoms]
        elif self.arch == "shared_bottom":
            hidden = [self.bottom(x)] * self.n_tasks
        elif self.arch == "mmoe":
            experts = self.experts(x)
            hidden = [_mix(experts, gate(x)) for gate in self.gates]
        else:
            hidden = [x] * self.n_tasks
            shared = x
            for level in range(len(self.shared_banks)):
                shared_out = self.shared_banks[level](shared)
                task_outs = [
                    bank(h) for bank, h in zip(cast(nn.ModuleList, self.task_banks[level]), hidden, strict=True)
                ]
                new_hidden = [
                    _mix(torch.cat([own, shared_out], dim=1), gate(h))
                    for own, gate, h in zip(task_outs, cast(nn.ModuleList, self.task_gates[level]), hidden, strict=True)
                ]
                if level < len(self.shared_gates):
                    shared = _mix(torch.cat([*task_outs, shared_out], dim=1), self.shared_gates[level](shared))
                hidden = new_hidden
        return torch.cat([tower(h) for tower, h in zip(self.towers, hidden, strict=True)], dim=1)


class _Probabilities(nn.Module):
    """sigmoid(logits) of a network: the graph that is exported and served."""

    def __init__(self, network: _Network) -> None:
        super().__init__()
        self.network = network

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor | None = None) -> torch.Tensor:
        """Per-task probabilities (rows, n_tasks)."""
        return torch.sigmoid(self.network(x_num, x_cat))


# ------------------------------------------------------------------------------------------- input checks


def _as_num(X_num: Any, *, n_features: int | None = None) -> np.ndarray:
    """``X_num`` as a float32 (n, d) matrix; NaN allowed (missing), infinities and wrong widths refused."""
    try:
        arr = np.asarray(X_num, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MultiTaskError(f"X_num must be numeric: {exc}") from exc
    if arr.ndim != 2:
        raise MultiTaskError(f"X_num must be a 2-D (rows, columns) array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise MultiTaskError("X_num has no columns: the ranker needs at least one numeric input")
    if n_features is not None and arr.shape[1] != n_features:
        raise MultiTaskError(f"X_num has {arr.shape[1]} columns but the model was fitted on {n_features}")
    bad = np.isinf(arr)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise MultiTaskError(f"X_num row {row}, column {col} is infinite ({arr[row, col]}); use NaN for missing")
    return np.ascontiguousarray(arr)


def _as_cat(X_cat: Any, *, n_rows: int, n_columns: int | None) -> np.ndarray | None:
    """``X_cat`` as an int64 (n, k) matrix of codes (None when the model has no categorical inputs)."""
    if X_cat is None:
        if n_columns:
            raise MultiTaskError(f"the model was fitted with {n_columns} categorical columns: pass X_cat")
        return None
    arr = np.asarray(X_cat)
    if arr.ndim != 2:
        raise MultiTaskError(f"X_cat must be a 2-D (rows, columns) array of integer codes, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise MultiTaskError(f"X_cat has {arr.shape[0]} rows but X_num has {n_rows}")
    if n_columns is not None and arr.shape[1] != n_columns:
        raise MultiTaskError(f"X_cat has {arr.shape[1]} columns but the model was fitted on {n_columns}")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size:
            raise MultiTaskError(f"X_cat must hold integer codes, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr.astype(np.int64))


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of ``score`` for binary ``y`` (None when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.min() == y.max():
        return None
    return float(roc_auc_score(y, score))


# ------------------------------------------------------------------------------------------ the estimator


class MultiTaskRanker:
    """Scikit-learn style multi-task classifier (single / shared-bottom / MMoE / PLE), optionally ESMM-trained."""

    def __init__(
        self,
        *,
        arch: str = "mmoe",
        n_tasks: int = 2,
        esmm: bool = False,
        embedding_dim: int = 8,
        expert_units: Sequence[int] = (64,),
        n_experts: int = 4,
        n_shared_experts: int = 2,
        n_task_experts: int = 2,
        ple_levels: int = 2,
        tower_units: Sequence[int] = (32,),
        epochs: int = 10,
        batch_size: int = 1024,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int = 2,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        self.arch = arch
        self.n_tasks = n_tasks
        self.esmm = esmm
        self.embedding_dim = embedding_dim
        self.expert_units = expert_units
        self.n_experts = n_experts
        self.n_shared_experts = n_shared_experts
        self.n_task_experts = n_task_experts
        self.ple_levels = ple_levels
        self.tower_units = tower_units
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.threads = threads

    # ---------------------------------------------------------------- sklearn plumbing

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's hyper-parameters (scikit-learn convention)."""
        names = [
            *("arch", "n_tasks", "esmm", "embedding_dim", "expert_units", "n_experts", "n_shared_experts"),
            *("n_task_experts", "ple_levels", "tower_units", "epochs", "batch_size", "learning_rate"),
            *("weight_decay", "validation_fraction", "patience", "seed", "threads"),
        ]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> MultiTaskRanker:
        """Set hyper-parameters by name (scikit-learn convention); unknown names are refused."""
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise MultiTaskError(f"unknown hyper-parameter {name!r} (known: {', '.join(sorted(valid))})")
            setattr(self, name, value)
        return self

    def _check_config(self) -> None:
        """Refuse hyper-parameters that cannot make a model, naming the setting."""
        if self.arch not in ARCHITECTURES:
            raise MultiTaskError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if int(self.n_tasks) < 1:
            raise MultiTaskError(f"n_tasks must be at least 1, got {self.n_tasks}")
        if self.esmm and self.n_tasks != 2:
            raise MultiTaskError(
                f"esmm=True needs n_tasks=2 (p(transfer), p(convert | transfer)), got n_tasks={self.n_tasks}"
            )
        for name in ("embedding_dim", "n_experts", "n_shared_experts", "n_task_experts", "ple_levels", "epochs"):
            if int(getattr(self, name)) < 1:
                raise MultiTaskError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.batch_size) < 1:
            raise MultiTaskError(f"batch_size must be at least 1, got {self.batch_size}")
        if not list(self.expert_units) or any(int(u) < 1 for u in self.expert_units):
            raise MultiTaskError(f"expert_units must be one or more positive widths, got {self.expert_units}")
        if any(int(u) < 1 for u in self.tower_units):
            raise MultiTaskError(f"tower_units must be positive widths, got {self.tower_units}")
        if not 0.0 <= float(self.validation_fraction) < 0.9:
            raise MultiTaskError(f"validation_fraction must be in [0, 0.9), got {self.validation_fraction}")
        if self.learning_rate <= 0:
            raise MultiTaskError(f"learning_rate must be positive, got {self.learning_rate}")

    def _check_labels(self, Y: Any, n_rows: int) -> np.ndarray:
        """``Y`` as float32 (n, n_tasks) of 0 / 1 / NaN, each task with both classes observed."""
        try:
            y = np.asarray(Y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise MultiTaskError(f"Y must be numeric 0/1 labels (NaN = not observed): {exc}") from exc
        if y.ndim == 1 and self.n_tasks == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != self.n_tasks:
            raise MultiTaskError(f"Y must have shape (rows, {self.n_tasks}) for n_tasks={self.n_tasks}, got {y.shape}")
        if y.shape[0] != n_rows:
            raise MultiTaskError(f"Y has {y.shape[0]} rows but X_num has {n_rows}")
        bad = ~(np.isnan(y) | (y == 0) | (y == 1))
        if bad.any():
            row, task = np.argwhere(bad)[0]
            raise MultiTaskError(f"Y row {row}, task {task} is {float(y[row, task])}: labels must be 0, 1 or NaN")
        if self.esmm:
            y = y.copy()
            both = (y[:, 1] == 1) & (y[:, 0] == 0)
            if both.any():
                row = int(np.flatnonzero(both)[0])
                raise MultiTaskError(
                    f"Y row {row} is converted (task 1 = 1) but not transferred (task 0 = 0): with esmm=True task 1 "
                    "is 'converted' over all exposures and implies a transfer"
                )
            y[(y[:, 0] == 0) & np.isnan(y[:, 1]), 1] = 0.0  # not transferred: certainly not converted
        for task in range(self.n_tasks):
            seen = y[~np.isnan(y[:, task]), task]
            if seen.size == 0 or seen.min() == seen.max():
                classes = sorted({int(v) for v in seen})
                raise MultiTaskError(
                    f"task {task} has only class {classes} among its {seen.size} observed labels: "
                    "it needs both 0 and 1 to learn"
                )
        return y.astype(np.float32)

    # ---------------------------------------------------------------- fit

    def fit(
        self,
        X_num: np.ndarray,
        Y: np.ndarray,
        *,
        X_cat: np.ndarray | None = None,
        cat_cardinalities: Sequence[int] | None = None,
        eval_set: tuple[Any, ...] | None = None,
    ) -> MultiTaskRanker:
        """Train on numeric ``X_num``, categorical codes ``X_cat`` and labels ``Y`` (n, n_tasks; NaN = unobserved).

        Early stopping watches ``eval_set`` = ``(X_num_val, Y_val)`` or ``(X_num_val, Y_val, X_cat_val)`` when
        given, else a random ``validation_fraction`` of the rows (which are then not trained on).
        """
        self._check_config()
        x_num = _as_num(X_num)
        n = x_num.shape[0]
        x_cat = _as_cat(X_cat, n_rows=n, n_columns=None)
        cards = self._cardinalities(x_cat, cat_cardinalities)
        y = self._check_labels(Y, n)
        if n < 2:
            raise MultiTaskError(f"need at least 2 rows to fit, got {n}")

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled just below
            mean = np.nanmean(x_num, axis=0)
            scale = np.nanstd(x_num, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0).astype(np.float32)
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0).astype(np.float32)

        rng = np.random.default_rng(self.seed)
        if eval_set is not None:
            x_num, x_cat, y, train_idx, val_idx = self._append_eval_set(eval_set, x_num, x_cat, y, cards)
        else:
            order = rng.permutation(n)
            n_val = round(n * float(self.validation_fraction))
            if self.validation_fraction > 0 and n_val < 2:
                n_val = 0
            val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]

        with _torch_threads(self.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            network = self._new_network(n_num=x_num.shape[1], cards=cards, mean=mean, scale=scale)
            generator = torch.Generator().manual_seed(int(self.seed))
            history = self._train(network, x_num, x_cat, y, train_idx, val_idx, generator)

        self.n_features_in_ = x_num.shape[1]
        self.cat_cardinalities_ = list(cards)
        self.num_mean_ = mean
        self.num_scale_ = scale
        self.network_ = network
        self.history_ = history
        best = max(history, key=lambda h: h["score"]) if history else None
        self.best_epoch_ = int(best["epoch"]) if best else len(history)
        self.validation_auc_ = list(best["auc"]) if best else []
        self.n_epochs_ = len(history)
        return self

    def _new_network(self, *, n_num: int, cards: Sequence[int], mean: np.ndarray, scale: np.ndarray) -> _Network:
        """A freshly initialised network for these hyper-parameters and input shapes."""
        return _Network(
            arch=self.arch,
            n_tasks=int(self.n_tasks),
            n_num=n_num,
            cardinalities=cards,
            embedding_dim=int(self.embedding_dim),
            expert_units=[int(u) for u in self.expert_units],
            n_experts=int(self.n_experts),
            n_shared_experts=int(self.n_shared_experts),
            n_task_experts=int(self.n_task_experts),
            ple_levels=int(self.ple_levels),
            tower_units=[int(u) for u in self.tower_units],
            num_mean=mean,
            num_scale=scale,
        )

    def save(self, directory: Path) -> Path:
        """Write the fitted model to ``directory`` (``ranker.json`` + ``weights.pt``); returns the directory."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = self.get_params()
        params["expert_units"] = [int(u) for u in self.expert_units]
        params["tower_units"] = [int(u) for u in self.tower_units]
        meta = {
            "format": _SAVE_FORMAT,
            "params": params,
            "n_features_in": self.n_features_in_,
            "cat_cardinalities": self.cat_cardinalities_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "n_epochs": self.n_epochs_,
            "validation_auc": self.validation_auc_,
        }
        torch.save(self.network_.state_dict(), directory / "weights.pt")
        (directory / "ranker.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: Path) -> MultiTaskRanker:
        """A model written by :meth:`save` (weights loaded with ``weights_only=True``: no code is unpickled)."""
        directory = Path(directory)
        meta_path, weights_path = directory / "ranker.json", directory / "weights.pt"
        if not meta_path.is_file() or not weights_path.is_file():
            raise MultiTaskError(f"{directory} holds no saved MultiTaskRanker (ranker.json and weights.pt)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MultiTaskError(f"{meta_path} is not readable JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != _SAVE_FORMAT:
            raise MultiTaskError(f"{meta_path} is not a saved MultiTaskRanker (format {_SAVE_FORMAT!r})")
        params = dict(meta["params"])
        params["expert_units"] = tuple(params["expert_units"])
        params["tower_units"] = tuple(params["tower_units"])
        model = cls(**params)
        n_num = int(meta["n_features_in"])
        cards = [int(c) for c in meta["cat_cardinalities"]]
        network = model._new_network(n_num=n_num, cards=cards, mean=np.zeros(n_num), scale=np.ones(n_num))
        try:
            network.load_state_dict(torch.load(weights_path, weights_only=True))
        except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError for a damaged file
            raise MultiTaskError(f"{weights_path} does not hold this model's weights: {exc}") from exc
        network.eval()
        model.network_ = network
        model.n_features_in_ = n_num
        model.cat_cardinalities_ = cards
        model.num_mean_ = network.num_mean.numpy().copy()
        model.num_scale_ = network.num_scale.numpy().copy()
        model.history_ = list(meta.get("history", []))
        model.best_epoch_ = int(meta.get("best_epoch", 0))
        model.n_epochs_ = int(meta.get("n_epochs", 0))
        model.validation_auc_ = list(meta.get("validation_auc", []))
        return model

    def _append_eval_set(
        self,
        eval_set: tuple[Any, ...],
        x_num: np.ndarray,
        x_cat: np.ndarray | None,
        y: np.ndarray,
        cards: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
        """Training rows followed by the checked ``eval_set`` rows, with the two index ranges."""
        if not isinstance(eval_set, tuple) or len(eval_set) not in (2, 3):
            raise MultiTaskError("eval_set must be (X_num_val, Y_val) or (X_num_val, Y_val, X_cat_val)")
        v_num = _as_num(eval_set[0], n_features=x_num.shape[1])
        v_cat = _as_cat(eval_set[2] if len(eval_set) == 3 else None, n_rows=v_num.shape[0], n_columns=len(cards))
        if v_cat is not None and x_cat is None:
            raise MultiTaskError("eval_set has X_cat_val but the training data has no X_cat")
        try:
            v_y = self._check_labels(eval_set[1], v_num.shape[0])
        except MultiTaskError as exc:
            raise MultiTaskError(f"eval_set: {exc}") from exc
        n, n_val = x_num.shape[0], v_num.shape[0]
        train_idx = np.random.default_rng(self.seed).permutation(n)
        val_idx = np.arange(n, n + n_val)
        both_cat = None if x_cat is None or v_cat is None else np.concatenate([x_cat, v_cat])
        return np.concatenate([x_num, v_num]), both_cat, np.concatenate([y, v_y]), train_idx, val_idx

    def _cardinalities(self, x_cat: np.ndarray | None, given: Sequence[int] | None) -> list[int]:
        """Per-column cardinalities of ``x_cat`` (given, or max code + 1), checking every code is in range."""
        if x_cat is None:
            if given:
                raise MultiTaskError("cat_cardinalities given without X_cat")
            return []
        k = x_cat.shape[1]
        if given is None:
            cards = [int(x_cat[:, j].max()) + 1 if x_cat.shape[0] else 1 for j in range(k)]
        else:
            cards = [int(c) for c in given]
            if len(cards) != k:
                raise MultiTaskError(f"cat_cardinalities has {len(cards)} entries but X_cat has {k} columns")
        for j in range(k):
            if cards[j] < 1:
                raise MultiTaskError(f"cat_cardinalities[{j}] must be at least 1, got {cards[j]}")
            col = x_cat[:, j]
            bad = (col < 0) | (col >= cards[j])
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise MultiTaskError(
                    f"X_cat row {row}, column {j} has code {int(col[row])}, outside [0, {cards[j]}) for that column"
                )
        return cards

    def _loss(self, logits: Any, y: Any) -> Any:
        """Sum over tasks of the mean binary cross-entropy over the rows where that task's label is observed."""
        f = torch.nn.functional
        total = logits.new_zeros(())
        for task in range(int(self.n_tasks)):
            target = y[:, task]
            seen = ~torch.isnan(target)
            if not bool(seen.any()):
                continue
            if self.esmm and task == 1:  # CTCVR = p(transfer) * p(convert | transfer), against "converted"
                log_p = f.logsigmoid(logits[:, 0]) + f.logsigmoid(logits[:, 1])
                log_q = torch.log1p(-torch.exp(log_p).clamp(max=1.0 - 1e-6))
                t = target[seen]
                total = total - (t * log_p[seen] + (1.0 - t) * log_q[seen]).mean()
            else:
                total = total + f.binary_cross_entropy_with_logits(logits[seen, task], target[seen])
        return total

    def _scores(self, probs: np.ndarray) -> np.ndarray:
        """What each task's validation AUC is measured on: the probability (CTCVR for esmm's task 1)."""
        if self.esmm:
            return np.stack([probs[:, 0], probs[:, 0] * probs[:, 1]], axis=1)
        return probs

    def _train(
        self,
        network: Any,
        x_num: np.ndarray,
        x_cat: np.ndarray | None,
        y: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        generator: Any,
    ) -> list[dict[str, Any]]:
        """Mini-batch Adam with early stopping on the mean validation AUC; leaves the best weights in ``network``."""
        tn = torch.from_numpy(x_num[train_idx])
        tc = torch.from_numpy(x_cat[train_idx]) if x_cat is not None else None
        ty = torch.from_numpy(y[train_idx])
        optimizer = torch.optim.Adam(
            network.parameters(), lr=float(self.learning_rate), weight_decay=float(self.weight_decay)
        )
        history: list[dict[str, Any]] = []
        best_state: dict[str, Any] | None = None
        best_score = -math.inf
        stale = 0
        n_train = len(train_idx)
        batch = int(self.batch_size)
        for epoch in range(1, int(self.epochs) + 1):
            network.train()
            order = torch.randperm(n_train, generator=generator)
            total, batches = 0.0, 0
            for start in range(0, n_train, batch):
                rows = order[start : start + batch]
                logits = network(tn[rows], tc[rows] if tc is not None else None)
                loss = self._loss(logits, ty[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
            network.eval()
            record: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(1, batches)}
            if len(val_idx):
                probs = self._predict(network, x_num[val_idx], x_cat[val_idx] if x_cat is not None else None)
                scores = self._scores(probs)
                aucs = [
                    _auc(y[val_idx, t][~np.isnan(y[val_idx, t])], scores[~np.isnan(y[val_idx, t]), t])
                    for t in range(int(self.n_tasks))
                ]
                known = [a for a in aucs if a is not None]
                with torch.no_grad():
                    val_loss = float(
                        self._loss(
                            torch.logit(torch.from_numpy(probs).double().clamp(1e-7, 1 - 1e-7)),
                            torch.from_numpy(y[val_idx]).double(),
                        )
                    )
                record["auc"] = aucs
                record["val_loss"] = val_loss
                record["score"] = float(np.mean(known)) if known else -val_loss
            else:
                record["auc"] = []
                record["score"] = -record["train_loss"]
            history.append(record)
            if record["score"] > best_score + 1e-6:
                best_score = record["score"]
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
                stale = 0
            else:
                stale += 1
                if len(val_idx) and stale >= int(self.patience):
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        return history

    # ---------------------------------------------------------------- predict / export

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise MultiTaskError("this MultiTaskRanker is not fitted yet: call fit first")

    @staticmethod
    def _predict(network: Any, x_num: np.ndarray, x_cat: np.ndarray | None) -> np.ndarray:
        """Eager probabilities of ``network`` in chunks."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, x_num.shape[0], _PREDICT_CHUNK):
                xn = torch.from_numpy(x_num[start : start + _PREDICT_CHUNK])
                xc = torch.from_numpy(x_cat[start : start + _PREDICT_CHUNK]) if x_cat is not None else None
                out.append(torch.sigmoid(network(xn, xc)).numpy())
        if not out:
            return np.zeros((0, network.n_tasks), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def predict_proba(self, X_num: np.ndarray, *, X_cat: np.ndarray | None = None) -> np.ndarray:
        """Per-task probabilities (n, n_tasks); with esmm the columns are p(transfer), p(convert | transfer)."""
        self._check_fitted()
        x_num = _as_num(X_num, n_features=self.n_features_in_)
        x_cat = _as_cat(X_cat, n_rows=x_num.shape[0], n_columns=len(self.cat_cardinalities_))
        if x_cat is not None and not self.cat_cardinalities_:
            raise MultiTaskError("the model was fitted without categorical columns: pass X_cat=None")
        with _torch_threads(self.threads):
            return self._predict(self.network_, x_num, x_cat)

    def predict_ctcvr(self, X_num: np.ndarray, *, X_cat: np.ndarray | None = None) -> np.ndarray:
        """p(transfer) · p(convert | transfer) per row (esmm models only): the expected-conversion score."""
        if not self.esmm:
            raise MultiTaskError("predict_ctcvr is for esmm=True models (tasks p(transfer), p(convert | transfer))")
        probs = self.predict_proba(X_num, X_cat=X_cat)
        return probs[:, 0] * probs[:, 1]

    def task_names(self) -> list[str]:
        """Names of the output columns."""
        if self.esmm:
            return ["p_transfer", "p_convert_given_transfer"]
        return [f"task_{t}" for t in range(int(self.n_tasks))]

    def export_onnx(self, path: Path) -> Path:
        """Write the fitted network as one ONNX graph (inputs ``x_num`` float32, ``x_cat`` int64; output ``probs``)."""
        import onnx

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        module = _Probabilities(self.network_).eval()
        example_num = torch.zeros(2, self.n_features_in_, dtype=torch.float32)
        args: tuple[Any, ...] = (example_num,)
        names = [NUM_INPUT]
        axes: dict[str, dict[int, str]] = {NUM_INPUT: {0: "rows"}, OUTPUT_NAME: {0: "rows"}}
        if self.cat_cardinalities_:
            args = (example_num, torch.zeros(2, len(self.cat_cardinalities_), dtype=torch.int64))
            names.append(CAT_INPUT)
            axes[CAT_INPUT] = {0: "rows"}
        tmp = path.with_name(path.name + ".tmp")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                args,
                str(tmp),
                dynamo=False,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=DEFAULT_OPSET,
            )
        model = onnx.load(str(tmp))
        meta = {
            "arch": self.arch,
            "esmm": str(bool(self.esmm)).lower(),
            "tasks": ",".join(self.task_names()),
            "n_num": str(self.n_features_in_),
            "cat_cardinalities": ",".join(str(c) for c in self.cat_cardinalities_),
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = _META_PREFIX + key, value
        onnx.save(model, str(tmp))
        tmp.replace(path)
        return path


# ------------------------------------------------------------------------------------------ ONNX serving


class OnnxRanker:
    """Serves a :meth:`MultiTaskRanker.export_onnx` file with ONNX Runtime on the CPU (``threads`` intra-op)."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise MultiTaskError(f"no ONNX model at {self.path} (write one with MultiTaskRanker.export_onnx)")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session: Any = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes
            raise MultiTaskError(
                f"{self.path} is not a readable ONNX model ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if _META_PREFIX + "n_num" not in meta:
            raise MultiTaskError(
                f"{self.path} is not a leadpilot multi-task ranker export (no {_META_PREFIX}* metadata)"
            )
        self.n_num = int(meta[_META_PREFIX + "n_num"])
        cards = meta.get(_META_PREFIX + "cat_cardinalities", "")
        self.cat_cardinalities = [int(c) for c in cards.split(",") if c]
        self.tasks = [t for t in meta.get(_META_PREFIX + "tasks", "").split(",") if t]
        self.arch = meta.get(_META_PREFIX + "arch", "")
        self.input_names = [i.name for i in self.session.get_inputs()]

    def predict_proba(self, X_num: np.ndarray, *, X_cat: np.ndarray | None = None) -> np.ndarray:
        """Per-task probabilities (n, n_tasks), the same as the exported model's ``predict_proba``."""
        x_num = _as_num(X_num, n_features=self.n_num)
        x_cat = _as_cat(X_cat, n_rows=x_num.shape[0], n_columns=len(self.cat_cardinalities))
        if x_num.shape[0] == 0:
            return np.zeros((0, len(self.tasks)), dtype=np.float32)
        feeds: dict[str, np.ndarray] = {NUM_INPUT: x_num}
        if CAT_INPUT in self.input_names:
            if x_cat is None:
                raise MultiTaskError(f"{self.path} takes categorical codes: pass X_cat")
            feeds[CAT_INPUT] = x_cat
        elif x_cat is not None:
            raise MultiTaskError(f"{self.path} was exported without categorical columns: pass X_cat=None")
        return np.asarray(self.session.run([OUTPUT_NAME], feeds)[0], dtype=np.float32)
