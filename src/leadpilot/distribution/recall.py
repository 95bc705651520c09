"""Recall: candidate salespeople for a lead (or candidate leads for a salesperson), four ways.

Every method scores the whole (lead × salesperson) grid and keeps the best ``k`` per row or column:

* :class:`RuleRecall`: the salesperson's declared product lines and region cover the lead, capacity is left,
  and (when given) the lead's hour falls in the salesperson's shift; the least loaded first.
* :class:`ScoreRecall`: the lead's score × the salesperson's historical win rate on the lead's product line
  and company size (shrunk towards their overall rate, which is shrunk towards everyone's).
* :class:`FMRecall`: a factorization machine (PyTorch) on (lead fields, salesperson id and attributes) →
  won, fitted on closed historical pairs; its score splits exactly into lead-only terms plus a
  salesperson bias plus a lead-vector · salesperson-vector inner product, so top-K is one matrix product.
* :class:`TwoTowerRecall`: a lead tower and a salesperson tower (PyTorch MLPs) trained on won pairs with
  in-batch negatives (sampled softmax with optional logQ correction); top-K by inner product.

Frames (pandas): ``salespeople`` has one row per salesperson, whose position is its index in every answer,
with ``region`` (one value) or ``regions`` (a list, empty = everywhere) and ``product_lines`` (a list,
empty = all), optionally ``left`` (capacity left today) and ``shift_start`` / ``shift_end`` (hours).
``leads`` has the lead fields (by default ``product_line``, ``region``, ``segment``, ``source``, ``budget``,
``visits``), optionally ``score`` and ``hour``. Training ``pairs`` are lead rows plus ``salesperson`` (a
position) and ``won`` (0/1). Answers are (rows, k) position arrays, padded with -1 where fewer than k
candidates are eligible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

    from leadpilot.simulate.world import Leads, World

LEAD_FIELDS = ("product_line", "region", "segment", "source")
LEAD_NUMERIC = ("budget", "visits")


class RecallError(ValueError):
    """Bad input to a recall method (names the row, field and why)."""


class Recall(Protocol):
    """A recall method: fit on historical pairs, then top-K salespeople per lead or leads per salesperson."""

    name: str

    def fit(self, pairs: pd.DataFrame, salespeople: pd.DataFrame) -> Self: ...

    def score(self, leads: pd.DataFrame) -> np.ndarray: ...

    def top_k_salespeople(self, leads: pd.DataFrame, k: int) -> np.ndarray: ...

    def top_k_leads(self, salesperson: int, leads: pd.DataFrame, k: int) -> np.ndarray: ...


# --- shared helpers ------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the ``k`` best scores per row, best first; -1 where a score is -inf or k > columns."""
    if k < 1:
        raise RecallError(f"k must be at least 1, got {k}")
    n, m = scores.shape
    out = np.full((n, k), -1, dtype=np.int64)
    take = min(k, m)
    if n == 0 or take == 0:
        return out
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < m else np.tile(np.arange(m), (n, 1))
    picked = np.take_along_axis(scores, part, axis=1)
    # Best first; equal scores by position, so answers do not depend on the partition's order.
    order = np.lexsort((part, -picked), axis=1)
    part = np.take_along_axis(part, order, axis=1)
    picked = np.take_along_axis(picked, order, axis=1)
    out[:, :take] = np.where(np.isneginf(picked), -1, part)
    return out


def hit_rate_at_k(top: np.ndarray, target: np.ndarray) -> float:
    """Share of rows whose ``target`` position is among the row's top-K."""
    if top.shape[0] != target.shape[0]:
        raise RecallError(f"{top.shape[0]} top-K rows but {target.shape[0]} targets")
    if top.shape[0] == 0:
        return float("nan")
    return float((top == target[:, None]).any(axis=1).mean())


def overlap_at_k(top: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true top-K that the method's top-K holds (recall@K against a top-K truth)."""
    if top.shape != truth.shape:
        raise RecallError(f"top-K shape {top.shape} differs from the truth's {truth.shape}")
    if top.shape[0] == 0:
        return float("nan")
    hits = (top[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return float(hits.any(axis=1).sum(axis=1).mean() / truth.shape[1])


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RecallError(
            f"{what} lack column(s) {', '.join(missing)}; they have: {', '.join(map(str, frame.columns))}"
        )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _as_list(value: Any) -> list[Any]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def _team_regions(salespeople: pd.DataFrame) -> list[list[Any]]:
    if "regions" in salespeople.columns:
        return [_as_list(v) for v in salespeople["regions"]]
    if "region" in salespeople.columns:
        return [_as_list(v) for v in salespeople["region"]]
    raise RecallError(f"salespeople lack a region or regions column; they have: {', '.join(salespeople.columns)}")


def _check_team(salespeople: pd.DataFrame) -> None:
    if len(salespeople) == 0:
        raise RecallError("no salespeople to recall from")
    _require(salespeople, ["product_lines"], "salespeople")
    _team_regions(salespeople)


def _check_pairs(pairs: pd.DataFrame, n_team: int, fields: Sequence[str], *, positives: bool = True) -> np.ndarray:
    """Validate training pairs; returns ``won`` as a bool array."""
    if len(pairs) == 0:
        raise RecallError("no training pairs: fit needs historical (lead, salesperson, won) rows")
    _require(pairs, ["salesperson", "won", *fields], "training pairs")
    rep = pd.to_numeric(pairs["salesperson"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(rep) | (rep != np.round(rep)) | (rep < 0) | (rep >= n_team))
    if bad.size:
        row = int(bad[0])
        raise RecallError(
            f"training pair row {row}: salesperson {_plain(pairs['salesperson'].iloc[row])!r} is not a position "
            f"in 0..{n_team - 1} ({bad.size} such rows)"
        )
    won = pairs["won"]
    ok = won.isin([0, 1, True, False]).to_numpy()
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise RecallError(f"training pair row {row}: won is {_plain(won.iloc[row])!r}, not 0/1")
    flags = won.astype(bool).to_numpy()
    if positives and not flags.any():
        raise RecallError(f"no positive pairs: none of the {len(pairs)} training pairs was won")
    return flags


class _Encoder:
    """Lead fields to indices in one shared table: categories by vocabulary, numbers by quantile bins (0 = unknown)."""

    def __init__(self, categorical: Sequence[str], numeric: Sequence[str], bins: int) -> None:
        self.categorical, self.numeric, self.bins = tuple(categorical), tuple(numeric), bins
        self.vocab: dict[str, dict[Any, int]] = {}
        self.edges: dict[str, np.ndarray] = {}
        self.offsets: np.ndarray = np.zeros(0, dtype=np.int64)
        self.size = 0

    @property
    def fields(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    def fit(self, frame: pd.DataFrame) -> _Encoder:
        sizes = []
        for name in self.categorical:
            values = sorted({v for v in frame[name].tolist() if not pd.isna(v)}, key=str)
            self.vocab[name] = {v: i + 1 for i, v in enumerate(values)}
            sizes.append(len(values) + 1)
        for name in self.numeric:
            x = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            x = x[np.isfinite(x)]
            qs = np.quantile(x, np.linspace(0, 1, self.bins + 1)[1:-1]) if x.size else np.zeros(0)
            self.edges[name] = np.unique(qs)
            sizes.append(len(self.edges[name]) + 2)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.size = int(sum(sizes))
        return self

    def transform(self, frame: pd.DataFrame, what: str) -> np.ndarray:
        _require(frame, self.fields, what)
        cols = []
        for name in self.categorical:
            vocab = self.vocab[name]
            cols.append(np.array([vocab.get(v, 0) for v in frame[name].tolist()], dtype=np.int64))
        for name in self.numeric:
            x = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            idx = np.searchsorted(self.edges[name], x, side="right") + 1
            cols.append(np.where(np.isfinite(x), idx, 0).astype(np.int64))
        return np.stack(cols, axis=1) + self.offsets[None, :] if cols else np.zeros((len(frame), 0), np.int64)


def _multi_hot(lists: list[list[Any]], vocab: dict[Any, int]) -> np.ndarray:
    out = np.zeros((len(lists), len(vocab)), dtype=np.float32)
    for i, values in enumerate(lists):
        for v in values:
            if v in vocab:
                out[i, vocab[v]] = 1.0
    return out


class _Team:
    """Salespeople's learned-model inputs: id, region and declared product lines (multi-hot)."""

    def __init__(self, salespeople: pd.DataFrame) -> None:
        _check_team(salespeople)
        regions = _team_regions(salespeople)
        lines = [_as_list(v) for v in salespeople["product_lines"]]
        self.region_vocab = {v: i for i, v in enumerate(sorted({r for rs in regions for r in rs}, key=str))}
        self.line_vocab = {v: i for i, v in enumerate(sorted({p for ps in lines for p in ps}, key=str))}
        self.n = len(salespeople)
        self.attributes = np.concatenate(
            [_multi_hot(regions, self.region_vocab), _multi_hot(lines, self.line_vocab)], axis=1
        )


class _Base:
    """Top-K answers from a method's (leads × salespeople) score grid."""

    name = "recall"
    n_salespeople_: int = 0

    def score(self, leads: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _fitted(self) -> None:
        if not self.n_salespeople_:
            raise RecallError(f"{type(self).__name__} is not fitted: call fit(pairs, salespeople) first")

    def top_k_salespeople(self, leads: pd.DataFrame, k: int) -> np.ndarray:
        """(leads, k) salesperson positions, best first; -1 pads where fewer than k are eligible."""
        return top_k(self.score(leads), k)

    def top_k_leads(self, salesperson: int, leads: pd.DataFrame, k: int) -> np.ndarray:
        """The ``k`` best lead rows (positions in ``leads``) for one salesperson, best first; -1 pads."""
        self._fitted()
        if not 0 <= salesperson < self.n_salespeople_:
            raise RecallError(f"salesperson {salesperson} is not a position in 0..{self.n_salespeople_ - 1}")
        return top_k(self.score(leads)[:, salesperson][None, :], k)[0]


# --- rules and scores ----------------------------------------------------------------------------


class RandomRecall(_Base):
    """Random salespeople for every lead (the baseline every method is measured against)."""

    name = "random"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, pairs: pd.DataFrame | None, salespeople: pd.DataFrame) -> Self:
        """Remember how many salespeople there are (pairs are ignored)."""
        if len(salespeople) == 0:
            raise RecallError("no salespeople to recall from")
        self.n_salespeople_ = len(salespeople)
        return self

    def score(self, leads: pd.DataFrame) -> np.ndarray:
        """Uniform random scores, the same for the same leads and seed."""
        self._fitted()
        return np.random.default_rng(self.seed).random((len(leads), self.n_salespeople_))


class RuleRecall(_Base):
    """Salespeople whose declared product lines and region cover the lead, with capacity and shift; least loaded first.

    ``strict=True`` returns only salespeople who match both product line and region (as the distribution run
    does); ``strict=False`` ranks the rest after them (one match before none), so every lead gets k candidates
    among those with capacity and on shift.
    """

    name = "rules"

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict

    def fit(self, pairs: pd.DataFrame | None, salespeople: pd.DataFrame) -> Self:
        """Take today's team (pairs are ignored: rules learn nothing); call again when capacity changes."""
        _check_team(salespeople)
        self.regions_ = [set(r) for r in _team_regions(salespeople)]
        self.lines_ = [set(_as_list(v)) for v in salespeople["product_lines"]]
        m = len(salespeople)
        left = (
            pd.to_numeric(salespeople["left"], errors="coerce").fillna(0).to_numpy(dtype=np.float64)
            if "left" in salespeople.columns
            else np.ones(m)
        )
        self.available_ = left > 0
        # Least loaded first: more capacity left is better, by a margin below one rule tier.
        self.tiebreak_ = 0.5 * left / (np.abs(left).max() + 1.0) - 1e-7 * np.arange(m)
        self.shift_: np.ndarray | None = None
        if {"shift_start", "shift_end"} <= set(salespeople.columns):
            self.shift_ = salespeople[["shift_start", "shift_end"]].to_numpy(dtype=np.float64)
        self.n_salespeople_ = m
        return self

    def score(self, leads: pd.DataFrame) -> np.ndarray:
        """Rule tier (2 = product line and region match) + capacity tie-break; -inf where not eligible."""
        self._fitted()
        _require(leads, ["product_line", "region"], "leads")
        m = self.n_salespeople_
        product = np.zeros((len(leads), m), dtype=bool)
        region = np.zeros((len(leads), m), dtype=bool)
        lead_lines, lead_regions = leads["product_line"].tolist(), leads["region"].tolist()
        for j in range(m):
            lines, regions = self.lines_[j], self.regions_[j]
            product[:, j] = [not lines or p in lines for p in lead_lines]
            region[:, j] = [not regions or r in regions for r in lead_regions]
        tier = product.astype(np.float64) + region
        scores = tier + self.tiebreak_[None, :]
        eligible = np.broadcast_to(self.available_[None, :], scores.shape).copy()
        if self.strict:
            eligible &= product & region
        if self.shift_ is not None and "hour" in leads.columns:
            hour = pd.to_numeric(leads["hour"], errors="coerce").to_numpy(dtype=np.float64)[:, None]
            start, end = self.shift_[:, 0][None, :], self.shift_[:, 1][None, :]
            on = np.where(start <= end, (hour >= start) & (hour < end), (hour >= start) | (hour < end))
            eligible &= on | np.isnan(hour)
        return np.where(eligible, scores, -np.inf)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)))


class ScoreRecall(_Base):
    """Lead score × the salesperson's historical win rate on the lead's product line and segment (shrunk)."""

    name = "score"

    def __init__(self, *, product_field: str = "product_line", segment_field: str = "segment", prior: float = 20.0):
        self.product_field, self.segment_field, self.prior = product_field, segment_field, prior

    def fit(self, pairs: pd.DataFrame, salespeople: pd.DataFrame) -> Self:
        """Win rates per salesperson overall, per product line and per segment from closed pairs."""
        if self.prior <= 0:
            raise RecallError(f"prior must be positive, got {self.prior}")
        if len(salespeople) == 0:
            raise RecallError("no salespeople to recall from")
        m = len(salespeople)
        won = _check_pairs(pairs, m, [self.product_field, self.segment_field]).astype(np.float64)
        rep = pairs["salesperson"].to_numpy().astype(np.int64)
        a = self.prior
        self.global_rate_ = float(won.mean())
        wins, n = np.bincount(rep, won, m), np.bincount(rep, minlength=m).astype(np.float64)
        self.rate_ = (wins + a * self.global_rate_) / (n + a)
        self.by_: dict[str, tuple[dict[Any, int], np.ndarray]] = {}
        for field in (self.product_field, self.segment_field):
            codes, values = pd.factorize(pairs[field], sort=True)
            k = len(values)
            flat = rep * k + codes
            w = np.bincount(flat, won, m * k).reshape(m, k)
            c = np.bincount(flat, minlength=m * k).reshape(m, k).astype(np.float64)
            rate = (w + a * self.rate_[:, None]) / (c + a)
            self.by_[field] = ({v: i for i, v in enumerate(values.tolist())}, rate)
        self.n_salespeople_ = m
        return self

    def win_rate(self, leads: pd.DataFrame) -> np.ndarray:
        """(leads, salespeople) estimated win rate: product-line and segment log-odds over the overall rate."""
        self._fitted()
        _require(leads, [self.product_field, self.segment_field], "leads")
        logit = -_logit(self.rate_)[None, :].repeat(len(leads), axis=0)
        for field in (self.product_field, self.segment_field):
            index, rate = self.by_[field]
            codes = np.array([index.get(v, -1) for v in leads[field].tolist()], dtype=np.int64)
            part = np.where(codes[:, None] >= 0, rate.T[np.maximum(codes, 0)], self.rate_[None, :])
            logit += _logit(part)
        return 1.0 / (1.0 + np.exp(-logit))

    def score(self, leads: pd.DataFrame) -> np.ndarray:
        """Lead score (column ``score``, else 1) × win rate."""
        lead = (
            pd.to_numeric(leads["score"], errors="coerce").fillna(0.5).to_numpy(dtype=np.float64)
            if "score" in leads.columns
            else np.ones(len(leads))
        )
        return lead[:, None] * self.win_rate(leads)


# --- learned: factorization machine and two towers -----------------------------------------------


def _torch() -> Any:
    import torch

    return torch


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """PyTorch intra-op threads set to ``n`` for the block (small models run far faster on one), then put back."""
    torch = _torch()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Learned(_Base):
    """Shared by the PyTorch methods: field encoding, the salesperson table, seeded training."""

    lead_fields: Sequence[str]
    lead_numeric: Sequence[str]
    bins: int
    use_attributes: bool
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    threads: int

    def _check_hyper(self) -> None:
        for name in ("epochs", "batch_size", "bins"):
            if int(getattr(self, name)) < 1:
                raise RecallError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise RecallError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.threads < 1:
            raise RecallError(f"threads must be at least 1, got {self.threads}")
        if not self.lead_fields and not self.lead_numeric:
            raise RecallError("no lead fields: give lead_fields and/or lead_numeric")

    def _prepare(self, pairs: pd.DataFrame, salespeople: pd.DataFrame, *, need_both: bool) -> np.ndarray:
        self._check_hyper()
        team = _Team(salespeople)
        won = _check_pairs(pairs, team.n, [*self.lead_fields, *self.lead_numeric])
        if need_both and won.all():
            raise RecallError(f"no negative pairs: all {len(pairs)} training pairs were won (the FM needs lost ones)")
        self.encoder_ = _Encoder(self.lead_fields, self.lead_numeric, self.bins).fit(pairs)
        self.team_ = team
        self.n_salespeople_ = team.n
        return won

    def _team_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        torch = _torch()
        ids = torch.arange(self.team_.n)
        attrs = torch.from_numpy(self.team_.attributes)
        if not self.use_attributes:
            attrs = torch.zeros_like(attrs)
        return ids, attrs

    def _leads_tensor(self, leads: pd.DataFrame) -> torch.Tensor:
        self._fitted()
        return _torch().from_numpy(self.encoder_.transform(leads, "leads"))


def _fm_module(n_lead: int, n_rep: int, n_attr: int, factors: int) -> Any:
    import torch
    from torch import nn

    class FM(nn.Module):  # type: ignore[misc, unused-ignore]
        """Second-order FM over lead fields (one-hot), salesperson id (one-hot) and attributes (valued)."""

        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1))
            self.lead_w = nn.Embedding(n_lead, 1)
            self.lead_v = nn.Embedding(n_lead, factors)
            self.rep_w = nn.Embedding(n_rep, 1)
            self.rep_v = nn.Embedding(n_rep, factors)
            self.attr_w = nn.Parameter(torch.zeros(n_attr))
            self.attr_v = nn.Parameter(torch.zeros(n_attr, factors))
            for p in (self.lead_w.weight, self.rep_w.weight):
                nn.init.zeros_(p)
            for p in (self.lead_v.weight, self.rep_v.weight, self.attr_v):
                nn.init.normal_(p, 0.0, 0.05)

        def lead_side(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(lead-only terms, the lead's interaction vector)."""
            v = self.lead_v(x)
            s = v.sum(1)
            self_terms = 0.5 * (s.pow(2) - v.pow(2).sum(1)).sum(1)
            return self.lead_w(x).sum((1, 2)) + self_terms, s

        def rep_side(self, ids: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(salesperson-only terms, the salesperson's interaction vector)."""
            v = torch.cat([self.rep_v(ids)[:, None, :], attrs[:, :, None] * self.attr_v[None]], 1)
            s = v.sum(1)
            self_terms = 0.5 * (s.pow(2) - v.pow(2).sum(1)).sum(1)
            return self.rep_w(ids)[:, 0] + attrs @ self.attr_w + self_terms, s

        def forward(self, x: torch.Tensor, ids: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
            lb, ls = self.lead_side(x)
            rb, rs = self.rep_side(ids, attrs)
            return self.bias + lb + rb + (ls * rs).sum(1)

    return FM()


class FMRecall(_Learned):
    """Factorization machine p(won | lead, salesperson), fitted on closed pairs; top-K by its pairwise score.

    ``negatives`` > 0 adds that many random salespeople per pair as not-won rows, weighted ``negative_weight``
    (routing exposure as a weak signal: it teaches the lead-region × salesperson-region interaction that
    history routed by region never shows contrasted).
    """

    name = "fm"

    def __init__(
        self,
        *,
        lead_fields: Sequence[str] = LEAD_FIELDS,
        lead_numeric: Sequence[str] = LEAD_NUMERIC,
        bins: int = 8,
        factors: int = 8,
        use_attributes: bool = True,
        epochs: int = 40,
        batch_size: int = 512,
        learning_rate: float = 0.002,
        weight_decay: float = 1e-4,
        negatives: int = 0,
        negative_weight: float = 0.2,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.lead_fields, self.lead_numeric, self.bins = tuple(lead_fields), tuple(lead_numeric), bins
        self.factors, self.use_attributes = factors, use_attributes
        self.epochs, self.batch_size, self.learning_rate = epochs, batch_size, learning_rate
        self.weight_decay, self.negatives, self.negative_weight = weight_decay, negatives, negative_weight
        self.seed, self.threads = seed, threads

    def fit(self, pairs: pd.DataFrame, salespeople: pd.DataFrame) -> Self:
        """Fit the FM by weighted log-loss on (lead, salesperson, won), plus sampled not-won pairs if asked."""
        if self.factors < 1:
            raise RecallError(f"factors must be at least 1, got {self.factors}")
        if self.negatives < 0:
            raise RecallError(f"negatives must be 0 or more, got {self.negatives}")
        torch = _torch()
        won = self._prepare(pairs, salespeople, need_both=self.negatives == 0)
        x = torch.from_numpy(self.encoder_.transform(pairs, "training pairs"))
        rep = torch.from_numpy(pairs["salesperson"].to_numpy().astype(np.int64))
        y = torch.from_numpy(won.astype(np.float32))
        weight = torch.ones(len(y))
        ids, attrs = self._team_tensors()
        with torch.random.fork_rng(devices=[]), _threads(self.threads):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            if self.negatives:
                fake = torch.randint(0, self.team_.n, (len(y) * self.negatives,), generator=gen)
                x = torch.cat([x, x.repeat(self.negatives, 1)])
                rep = torch.cat([rep, fake])
                y = torch.cat([y, torch.zeros(len(fake))])
                weight = torch.cat([weight, torch.full((len(fake),), float(self.negative_weight))])
            model = _fm_module(self.encoder_.size, self.team_.n, attrs.shape[1], self.factors)
            with torch.no_grad():
                rate = float(y.mean().clamp(1e-3, 1 - 1e-3))
                model.bias.fill_(float(np.log(rate / (1 - rate))))
            opt = torch.optim.Adam(model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
            self.losses_: list[float] = []
            for _ in range(self.epochs):
                order = torch.randperm(len(y), generator=gen)
                total = 0.0
                for start in range(0, len(y), self.batch_size):
                    b = order[start : start + self.batch_size]
                    logit = model(x[b], ids[rep[b]], attrs[rep[b]])
                    loss = (loss_fn(logit, y[b]) * weight[b]).sum() / weight[b].sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(b)
                self.losses_.append(total / len(y))
        self.model_ = model.eval()
        with torch.no_grad():
            rb, rs = model.rep_side(ids, attrs)
        # Score(lead, rep) = lead-only terms + [rep vector, rep bias] · [lead vector, 1]: one matrix product.
        self.salesperson_vectors_ = torch.cat([rs, rb[:, None]], 1).numpy().astype(np.float64)
        return self

    def lead_vectors(self, leads: pd.DataFrame) -> np.ndarray:
        """[interaction vector, 1] per lead: its inner product with a salesperson vector ranks salespeople."""
        torch = _torch()
        x = self._leads_tensor(leads)
        with torch.no_grad(), _threads(self.threads):
            _, ls = self.model_.lead_side(x)
        return np.concatenate([ls.numpy().astype(np.float64), np.ones((len(leads), 1))], axis=1)

    def score(self, leads: pd.DataFrame) -> np.ndarray:
        """The FM's logit less the lead-only terms (they do not change any lead's ranking of salespeople)."""
        return self.lead_vectors(leads) @ self.salesperson_vectors_.T

    def predict_proba(self, leads: pd.DataFrame) -> np.ndarray:
        """(leads, salespeople) p(won) with every term of the FM."""
        torch = _torch()
        x = self._leads_tensor(leads)
        with torch.no_grad(), _threads(self.threads):
            lb, _ = self.model_.lead_side(x)
            bias = self.model_.bias.item()
        logit = bias + lb.numpy()[:, None].astype(np.float64) + self.score(leads)
        return np.asarray(1.0 / (1.0 + np.exp(-logit)))


def _towers(n_lead: int, n_fields: int, n_rep: int, n_attr: int, dim: int, hidden: int, out: int) -> Any:
    import torch
    from torch import nn

    class Towers(nn.Module):  # type: ignore[misc, unused-ignore]
        """Lead tower (field embeddings → MLP) and salesperson tower (id embedding + attributes → MLP)."""

        def __init__(self) -> None:
            super().__init__()
            self.lead_emb = nn.Embedding(n_lead, dim)
            self.lead_mlp = nn.Sequential(nn.Linear(n_fields * dim, hidden), nn.ReLU(), nn.Linear(hidden, out))
            self.rep_emb = nn.Embedding(n_rep, dim)
            self.rep_attr = nn.Linear(n_attr, dim) if n_attr else None
            self.rep_mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

        def lead(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.lead_mlp(self.lead_emb(x).flatten(1)), dim=1)

        def rep(self, ids: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
            a = self.rep_attr(attrs) if self.rep_attr is not None else torch.zeros(len(ids), dim)
            return nn.functional.normalize(self.rep_mlp(torch.cat([self.rep_emb(ids), a], 1)), dim=1)

    return Towers()


class TwoTowerRecall(_Learned):
    """Two-tower DNN on won pairs with in-batch negatives (sampled softmax, logQ-corrected); top-K by inner product."""

    name = "two_tower"

    def __init__(
        self,
        *,
        lead_fields: Sequence[str] = LEAD_FIELDS,
        lead_numeric: Sequence[str] = LEAD_NUMERIC,
        bins: int = 8,
        embedding_dim: int = 16,
        hidden: int = 64,
        output_dim: int = 32,
        use_attributes: bool = True,
        temperature: float = 0.1,
        logq_correction: bool = True,
        epochs: int = 20,
        batch_size: int = 256,
        learning_rate: float = 0.005,
        weight_decay: float = 1e-5,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.lead_fields, self.lead_numeric, self.bins = tuple(lead_fields), tuple(lead_numeric), bins
        self.embedding_dim, self.hidden, self.output_dim = embedding_dim, hidden, output_dim
        self.use_attributes, self.temperature, self.logq_correction = use_attributes, temperature, logq_correction
        self.epochs, self.batch_size, self.learning_rate = epochs, batch_size, learning_rate
        self.weight_decay, self.seed, self.threads = weight_decay, seed, threads

    def fit(self, pairs: pd.DataFrame, salespeople: pd.DataFrame) -> Self:
        """Train both towers on the won pairs: each lead's salesperson against the batch's other salespeople."""
        for name in ("embedding_dim", "hidden", "output_dim"):
            if int(getattr(self, name)) < 1:
                raise RecallError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise RecallError(f"temperature must be positive, got {self.temperature}")
        torch = _torch()
        won = self._prepare(pairs, salespeople, need_both=False)
        positives = pairs[won]
        x = torch.from_numpy(self.encoder_.transform(positives, "training pairs"))
        rep = torch.from_numpy(positives["salesperson"].to_numpy().astype(np.int64))
        ids, attrs = self._team_tensors()
        # logQ: how often each salesperson shows up as an in-batch negative ∝ their share of positives.
        freq = np.bincount(rep.numpy(), minlength=self.team_.n).astype(np.float64) / len(rep)
        log_q = torch.from_numpy(np.log(np.maximum(freq, 1e-9)).astype(np.float32))
        with torch.random.fork_rng(devices=[]), _threads(self.threads):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            model = _towers(
                self.encoder_.size,
                x.shape[1],
                self.team_.n,
                attrs.shape[1],
                self.embedding_dim,
                self.hidden,
                self.output_dim,
            )
            opt = torch.optim.Adam(model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            self.losses_: list[float] = []
            for _ in range(self.epochs):
                order = torch.randperm(len(rep), generator=gen)
                total = 0.0
                for start in range(0, len(rep), self.batch_size):
                    b = order[start : start + self.batch_size]
                    r = rep[b]
                    logits = model.lead(x[b]) @ model.rep(ids[r], attrs[r]).T / self.temperature
                    if self.logq_correction:
                        logits = logits - log_q[r][None, :]
                    # The same salesperson twice in a batch is not a negative for itself.
                    same = (r[:, None] == r[None, :]) & ~torch.eye(len(b), dtype=torch.bool)
                    logits = logits.masked_fill(same, float("-inf"))
                    loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(b)))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(b)
                self.losses_.append(total / len(rep))
        self.model_ = model.eval()
        with torch.no_grad():
            self.salesperson_vectors_ = model.rep(ids, attrs).numpy().astype(np.float64)
        return self

    def lead_vectors(self, leads: pd.DataFrame) -> np.ndarray:
        """The lead tower's unit vectors."""
        torch = _torch()
        x = self._leads_tensor(leads)
        with torch.no_grad(), _threads(self.threads):
            return np.asarray(self.model_.lead(x).numpy().astype(np.float64))

    def score(self, leads: pd.DataFrame) -> np.ndarray:
        """Inner products of lead and salesperson vectors."""
        return self.lead_vectors(leads) @ self.salesperson_vectors_.T


METHODS: dict[str, type[_Base]] = {
    "random": RandomRecall,
    "rules": RuleRecall,
    "score": ScoreRecall,
    "fm": FMRecall,
    "two_tower": TwoTowerRecall,
}


# --- the simulator as recall data --------------------------------------------------------------


def simulated_frames(world: World, leads: Leads, rows: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(leads, salespeople) frames of a simulated world with only what a CRM observes (names, not codes)."""
    from leadpilot.simulate.world import PRODUCT_LINES, REGIONS, SEGMENTS, SOURCES

    idx = np.arange(len(leads)) if rows is None else np.asarray(rows)
    lead_frame = pd.DataFrame(
        {
            "product_line": np.array(PRODUCT_LINES, dtype=object)[leads.product[idx]],
            "region": np.array(REGIONS, dtype=object)[leads.region[idx]],
            "segment": np.array(SEGMENTS, dtype=object)[leads.segment[idx]],
            "source": np.array(SOURCES, dtype=object)[leads.source[idx]],
            "budget": leads.budget[idx],
            "visits": leads.visits[idx],
        }
    )
    people = world.people
    team = pd.DataFrame(
        {
            "region": [REGIONS[int(r)] for r in people.sales_region],
            "product_lines": [[PRODUCT_LINES[j] for j in lines] for lines in people.product_lines],
            "capacity": people.capacity,
            "left": people.capacity,
        }
    )
    return lead_frame, team
