"""Feature matrices to files: LibSVM (the seed's compact format), JSON lines (for comparison) and Parquet."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from leadpilot.features.dictionary import FeatureDictionary
from leadpilot.features.store import FeatureMatrix

FORMATS = ("libsvm", "json", "parquet")


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_libsvm(matrix: FeatureMatrix, path: Path, labels: Sequence[float] | None = None) -> int:
    """``<label> <feature id>:<value> ...`` per entity (ids ascending), keys in ``<path>.keys.csv``; returns bytes."""
    tmp = _atomic(path)
    csr = matrix.matrix.tocsr()
    csr.sort_indices()
    ids = matrix.feature_ids
    with tmp.open("w", encoding="ascii") as out:
        for r in range(csr.shape[0]):
            start, end = csr.indptr[r], csr.indptr[r + 1]
            label = _value(labels[r]) if labels is not None else "0"
            cells = " ".join(
                f"{ids[c]}:{_value(v)}" for c, v in zip(csr.indices[start:end], csr.data[start:end], strict=True)
            )
            out.write(f"{label} {cells}\n" if cells else f"{label}\n")
    os.replace(tmp, path)
    keys_path = path.with_name(path.name + ".keys.csv")
    np.savetxt(keys_path, matrix.keys, fmt="%d", delimiter=",", header="k1,k2", comments="")
    return path.stat().st_size


def write_json(matrix: FeatureMatrix, path: Path, dictionary: FeatureDictionary) -> int:
    """One JSON object per entity, features by name (what a naive feature push would send); returns bytes."""
    tmp = _atomic(path)
    csr = matrix.matrix.tocsr()
    names = [dictionary.by_id(int(i)).name for i in matrix.feature_ids]
    with tmp.open("w", encoding="utf-8") as out:
        for r in range(csr.shape[0]):
            start, end = csr.indptr[r], csr.indptr[r + 1]
            features = {names[c]: float(v) for c, v in zip(csr.indices[start:end], csr.data[start:end], strict=True)}
            key = {"k1": int(matrix.keys[r, 0]), "k2": int(matrix.keys[r, 1])}
            out.write(json.dumps({"entity": key, "features": features}) + "\n")
    os.replace(tmp, path)
    return path.stat().st_size


def write_parquet(matrix: FeatureMatrix, path: Path) -> int:
    """Long (k1, k2, feature_id, value) Parquet; returns bytes."""
    tmp = _atomic(path)
    coo = matrix.matrix.tocoo()
    table = pa.table(
        {
            "k1": pa.array(matrix.keys[coo.row, 0], pa.int64()),
            "k2": pa.array(matrix.keys[coo.row, 1], pa.int64()),
            "feature_id": pa.array(matrix.feature_ids[coo.col], pa.int32()),
            "value": pa.array(coo.data, pa.float64()),
        }
    )
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path.stat().st_size
