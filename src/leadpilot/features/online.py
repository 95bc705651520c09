"""Online feature store: each entity's latest feature vector, for lookups at serving time.

Two backends behind one interface, chosen by ``LEADPILOT_ONLINE_STORE``: ``database`` (the CRM database,
table ``online_features``; the default, nothing to run) and ``redis`` (one hash per dimension and
snapshot, switched atomically when a new snapshot is written).  A vector is packed as ``uint32 n`` +
``n int32 feature ids`` + ``n float64 values``: a 1,000-feature vector is 12 KB and decodes with two
``numpy.frombuffer`` calls.  DAYS_SINCE features are stored as anchors and turned into days as of the
lookup time, so they are exact at serving time, not as of the last batch run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from scipy import sparse
from sqlalchemy import Engine, delete, select, text

from leadpilot.features.dictionary import Dimension, FeatureDictionary
from leadpilot.features.models import OnlineFeatures
from leadpilot.features.sql import DIMENSION_CODES
from leadpilot.features.store import FeatureMatrix, anchors_to_days

ONLINE_STORES = ("database", "redis")
WRITE_BATCH = 5_000
_HEADER = np.dtype("<u4")
_IDS = np.dtype("<i4")
_VALUES = np.dtype("<f8")


def pack(feature_ids: np.ndarray, values: np.ndarray) -> bytes:
    """One vector as bytes (ids ascending)."""
    n = len(feature_ids)
    return np.array([n], _HEADER).tobytes() + feature_ids.astype(_IDS).tobytes() + values.astype(_VALUES).tobytes()


def unpack(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Feature ids and values of a packed vector."""
    n = int(np.frombuffer(blob, _HEADER, count=1)[0])
    ids = np.frombuffer(blob, _IDS, count=n, offset=4)
    values = np.frombuffer(blob, _VALUES, count=n, offset=4 + 4 * n)
    return ids, values


def _rows(matrix: FeatureMatrix) -> list[tuple[int, int, bytes]]:
    csr = matrix.matrix.tocsr()
    csr.sort_indices()
    out = []
    for r in range(csr.shape[0]):
        start, end = csr.indptr[r], csr.indptr[r + 1]
        out.append(
            (
                int(matrix.keys[r, 0]),
                int(matrix.keys[r, 1]),
                pack(matrix.feature_ids[csr.indices[start:end]], csr.data[start:end]),
            )
        )
    return out


class OnlineStore(ABC):
    """Latest vectors by entity key."""

    def __init__(self, dictionary: FeatureDictionary) -> None:
        self.dictionary = dictionary

    @abstractmethod
    def write(self, matrix: FeatureMatrix, as_of: date) -> int:
        """Replace the dimension's vectors with this snapshot's (entities absent from it are removed)."""

    @abstractmethod
    def _blobs(self, dimension: Dimension, keys: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """Packed vectors in the order of ``keys`` (None: no features)."""

    def get(self, dimension: Dimension, key: tuple[int, int], *, now: datetime | None = None) -> dict[int, float]:
        """One entity's features as {feature id: value}; {} when it has none."""
        blob = self._blobs(dimension, [key])[0]
        if blob is None:
            return {}
        ids, values = unpack(blob)
        values = anchors_to_days(ids, values, _now_seconds(now), self.dictionary)
        return dict(zip(ids.tolist(), values.tolist(), strict=True))

    def get_many(
        self, dimension: Dimension, keys: Sequence[tuple[int, int]], *, now: datetime | None = None
    ) -> FeatureMatrix:
        """Many entities' features as a CSR matrix (rows in the order of ``keys``)."""
        feature_ids = np.array([d.id for d in self.dictionary.for_dimension(dimension)], dtype=np.int32)
        blobs = self._blobs(dimension, keys)
        indptr = [0]
        cols: list[np.ndarray] = []
        data: list[np.ndarray] = []
        for blob in blobs:
            if blob is not None:
                ids, values = unpack(blob)
                cols.append(np.searchsorted(feature_ids, ids))
                data.append(values)
                indptr.append(indptr[-1] + len(ids))
            else:
                indptr.append(indptr[-1])
        values = np.concatenate(data) if data else np.empty(0)
        col_index = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
        values = anchors_to_days(feature_ids[col_index], values, _now_seconds(now), self.dictionary)
        matrix = sparse.csr_matrix((values, col_index, np.array(indptr)), shape=(len(keys), len(feature_ids)))
        return FeatureMatrix(dimension, np.asarray(keys, dtype=np.int64).reshape(-1, 2), feature_ids, matrix)


def _now_seconds(now: datetime | None) -> float:
    return (now or datetime.now(UTC)).timestamp()


class DatabaseOnlineStore(OnlineStore):
    """Vectors in the CRM database (table ``online_features``, primary key (dim, k1, k2))."""

    def __init__(self, dictionary: FeatureDictionary, engine: Engine) -> None:
        super().__init__(dictionary)
        self.engine = engine
        self._select_one = text("SELECT vector FROM online_features WHERE dim = :dim AND k1 = :k1 AND k2 = :k2")

    def write(self, matrix: FeatureMatrix, as_of: date) -> int:
        dim = DIMENSION_CODES[matrix.dimension]
        rows = _rows(matrix)
        stamp = datetime.now(UTC)
        upsert = text(
            "INSERT INTO online_features (dim, k1, k2, vector, as_of, written_at) "
            "VALUES (:dim, :k1, :k2, :vector, :as_of, :written_at) ON CONFLICT (dim, k1, k2) DO UPDATE SET "
            "vector = excluded.vector, as_of = excluded.as_of, written_at = excluded.written_at"
        )
        with self.engine.begin() as conn:
            for start in range(0, len(rows), WRITE_BATCH):
                conn.execute(
                    upsert,
                    [
                        {"dim": dim, "k1": k1, "k2": k2, "vector": blob, "as_of": as_of, "written_at": stamp}
                        for k1, k2, blob in rows[start : start + WRITE_BATCH]
                    ],
                )
            conn.execute(delete(OnlineFeatures).where(OnlineFeatures.dim == dim, OnlineFeatures.written_at < stamp))
        return len(rows)

    def _blobs(self, dimension: Dimension, keys: Sequence[tuple[int, int]]) -> list[bytes | None]:
        dim = DIMENSION_CODES[dimension]
        with self.engine.connect() as conn:
            if len(keys) == 1:
                found = conn.execute(self._select_one, {"dim": dim, "k1": keys[0][0], "k2": keys[0][1]}).scalar()
                return [bytes(found) if found is not None else None]
            k1s = sorted({k[0] for k in keys})
            rows = conn.execute(
                select(OnlineFeatures.k1, OnlineFeatures.k2, OnlineFeatures.vector).where(
                    OnlineFeatures.dim == dim, OnlineFeatures.k1.in_(k1s)
                )
            ).all()
        by_key = {(r[0], r[1]): bytes(r[2]) for r in rows}
        return [by_key.get((k[0], k[1])) for k in keys]


class RedisOnlineStore(OnlineStore):
    """Vectors in Redis: hash ``<prefix>:<dim>:<version>`` (field ``k1:k2``), ``<prefix>:<dim>:current`` names it."""

    def __init__(self, dictionary: FeatureDictionary, url: str, *, prefix: str = "leadpilot:features") -> None:
        super().__init__(dictionary)
        import redis

        self.client: Any = redis.Redis.from_url(url)
        self.prefix = prefix
        self._current: dict[int, tuple[float, bytes]] = {}  # dim -> (read at, hash name), cached for 1 s

    def write(self, matrix: FeatureMatrix, as_of: date) -> int:
        dim = DIMENSION_CODES[matrix.dimension]
        name = f"{self.prefix}:{dim}:{as_of.isoformat()}:{time.time_ns()}"
        rows = _rows(matrix)
        for start in range(0, len(rows), WRITE_BATCH):
            self.client.hset(name, mapping={f"{k1}:{k2}": blob for k1, k2, blob in rows[start : start + WRITE_BATCH]})
        pointer = f"{self.prefix}:{dim}:current"
        old = self.client.getset(pointer, name)
        if old and old != name.encode():
            self.client.unlink(old)
        self._current.pop(dim, None)
        return len(rows)

    def _hash(self, dim: int) -> bytes | None:
        cached = self._current.get(dim)
        if cached and time.monotonic() - cached[0] < 1.0:
            return cached[1]
        name = self.client.get(f"{self.prefix}:{dim}:current")
        if name is not None:
            self._current[dim] = (time.monotonic(), name)
        return name

    def _blobs(self, dimension: Dimension, keys: Sequence[tuple[int, int]]) -> list[bytes | None]:
        name = self._hash(DIMENSION_CODES[dimension])
        if name is None:
            return [None] * len(keys)
        fields = [f"{k[0]}:{k[1]}" for k in keys]
        if len(fields) == 1:
            return [self.client.hget(name, fields[0])]
        return list(self.client.hmget(name, fields))


def get_online_store(kind: str, dictionary: FeatureDictionary, *, engine: Engine, redis_url: str | None) -> OnlineStore:
    """The configured online store."""
    if kind == "database":
        return DatabaseOnlineStore(dictionary, engine)
    if kind == "redis":
        if not redis_url:
            raise ValueError("LEADPILOT_ONLINE_STORE=redis needs LEADPILOT_REDIS_URL")
        return RedisOnlineStore(dictionary, redis_url)
    raise ValueError(f"unknown online store {kind!r} (known: {', '.join(ONLINE_STORES)})")


def materialize(store: Any, online: OnlineStore, day: date | None = None) -> dict[str, int]:
    """Write the stored snapshot of ``day`` (default: the newest run) of every dimension to the online store."""
    runs = store.runs()
    if not runs:
        return {}
    day = day or runs[-1]
    return {dim.value: online.write(store.values_at(dim, day, anchors=True), day) for dim in Dimension}
