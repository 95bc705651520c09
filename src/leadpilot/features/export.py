"""Feature matrices to files: LibSVM (the seed's compact format) with its feature map, JSON lines and Parquet."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from leadpilot.features.dictionary import FeatureDictionary, Function
from leadpilot.features.store import FeatureMatrix

FORMATS = ("libsvm", "json", "parquet")


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def _value(v: float) -> str:
    if isinstance(v, int | np.integer):
        return str(int(v))
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


INDEX_BASES = (0, 1)
FEATURE_MAP_COLUMNS = ("index", "feature_id", "name", "type")
_INTEGER_FUNCTIONS = (Function.COUNT, Function.DISTINCT_COUNT)


@dataclass(frozen=True)
class FeatureMap:
    """What the columns of an exported LibSVM file are: index base and, per index, derived id, name, type."""

    index_base: int
    dimension: str
    indices: list[int]
    feature_ids: list[int]
    names: list[str]
    types: list[str]

    @property
    def n_features(self) -> int:
        """Width of the matrix (pass it to loaders: trailing all-zero columns do not appear in the file)."""
        return len(self.indices)


def companion_paths(path: Path) -> tuple[Path, Path, Path]:
    """``<path>.keys.csv``, ``<path>.featmap.tsv`` and ``<path>.xgb.fmap``."""
    return (
        path.with_name(path.name + ".keys.csv"),
        path.with_name(path.name + ".featmap.tsv"),
        path.with_name(path.name + ".xgb.fmap"),
    )


def _name_and_type(feature_id: int, dictionary: FeatureDictionary | None) -> tuple[str, str]:
    if dictionary is None:
        return f"feature_{feature_id}", "q"
    try:
        derived = dictionary.by_id(feature_id)
    except KeyError:
        return f"feature_{feature_id}", "q"
    return derived.name, "int" if derived.function in _INTEGER_FUNCTIONS else "q"


def write_libsvm(
    matrix: FeatureMatrix,
    path: Path,
    labels: Sequence[float] | np.ndarray | None = None,
    *,
    qids: Sequence[int] | np.ndarray | None = None,
    index_base: int = 0,
    dictionary: FeatureDictionary | None = None,
) -> int:
    """One line per entity: ``<label> [qid:<qid>] <index>:<value> ...``, indices ascending.

    The index of a column is its position in ``matrix.feature_ids`` plus ``index_base`` (0 or 1), so a
    loader gives back an entities × ``len(feature_ids)`` matrix. Labels default to 0; an entity with no
    features is a line with its label (and qid) only. Values are written exactly (integers as integers,
    other floats by ``repr``). Beside the file: ``<path>.keys.csv`` (row keys, in line order),
    ``<path>.featmap.tsv`` (index base, and per index the derived feature id, name and type) and
    ``<path>.xgb.fmap`` (an XGBoost feature map: XGBoost's zero-based column, name, type); see
    :func:`companion_paths`. Returns the LibSVM file's size in bytes.
    """
    if index_base not in INDEX_BASES:
        raise ValueError(f"index_base must be 0 or 1, not {index_base!r}")
    csr = matrix.matrix.tocsr()
    csr.sort_indices()
    rows = csr.shape[0]
    label_text = _column_text("labels", labels, rows)
    qid_text = _qid_text(qids, rows)
    tmp = _atomic(path)
    with tmp.open("w", encoding="ascii") as out:
        for r in range(rows):
            start, end = csr.indptr[r], csr.indptr[r + 1]
            head = label_text[r] if label_text is not None else "0"
            if qid_text is not None:
                head += f" qid:{qid_text[r]}"
            cells = " ".join(
                f"{c + index_base}:{_value(v)}"
                for c, v in zip(csr.indices[start:end], csr.data[start:end], strict=True)
            )
            out.write(f"{head} {cells}\n" if cells else f"{head}\n")
    os.replace(tmp, path)
    keys_path, map_path, fmap_path = companion_paths(path)
    np.savetxt(keys_path, matrix.keys, fmt="%d", delimiter=",", header="k1,k2", comments="")
    write_feature_map(matrix, map_path, index_base=index_base, dictionary=dictionary)
    write_xgboost_feature_map(matrix, fmap_path, dictionary=dictionary)
    return path.stat().st_size


def _column_text(what: str, values: Sequence[float] | np.ndarray | None, rows: int) -> list[str] | None:
    if values is None:
        return None
    array = np.asarray(values)
    if array.shape != (rows,):
        raise ValueError(f"{what} has shape {array.shape}, the matrix has {rows} rows")
    if not np.all(np.isfinite(array.astype(np.float64))):
        raise ValueError(f"{what} must be finite numbers")
    return [_value(v) for v in array.tolist()]


def _qid_text(qids: Sequence[int] | np.ndarray | None, rows: int) -> list[str] | None:
    if qids is None:
        return None
    array = np.asarray(qids)
    if array.shape != (rows,):
        raise ValueError(f"qids has shape {array.shape}, the matrix has {rows} rows")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError("qids must be non-negative integers")
    if array.size:
        starts = array[np.r_[True, array[1:] != array[:-1]]]
        if len(np.unique(starts)) != len(starts):
            raise ValueError("rows with the same qid must be adjacent (order the matrix by qid first)")
    return [str(int(q)) for q in array.tolist()]


def write_feature_map(
    matrix: FeatureMatrix, path: Path, *, index_base: int = 0, dictionary: FeatureDictionary | None = None
) -> Path:
    """``# index_base: <0|1>``, ``# dimension: <dim>``, a header, then ``index feature_id name type`` (tabs)."""
    if index_base not in INDEX_BASES:
        raise ValueError(f"index_base must be 0 or 1, not {index_base!r}")
    tmp = _atomic(path)
    with tmp.open("w", encoding="utf-8") as out:
        out.write(f"# index_base: {index_base}\n")
        out.write(f"# dimension: {matrix.dimension.value}\n")
        out.write("\t".join(FEATURE_MAP_COLUMNS) + "\n")
        for c, fid in enumerate(matrix.feature_ids.tolist()):
            name, kind = _name_and_type(int(fid), dictionary)
            out.write(f"{c + index_base}\t{int(fid)}\t{name}\t{kind}\n")
    os.replace(tmp, path)
    return path


def write_xgboost_feature_map(
    matrix: FeatureMatrix, path: Path, *, dictionary: FeatureDictionary | None = None
) -> Path:
    """XGBoost's ``fmap`` (``<column>\\t<name>\\t<q|int>``, columns from 0 whatever the LibSVM index base)."""
    tmp = _atomic(path)
    with tmp.open("w", encoding="utf-8") as out:
        for c, fid in enumerate(matrix.feature_ids.tolist()):
            name, kind = _name_and_type(int(fid), dictionary)
            out.write(f"{c}\t{name}\t{kind}\n")
    os.replace(tmp, path)
    return path


def read_feature_map(path: Path) -> FeatureMap:
    """Parse a ``.featmap.tsv`` written by :func:`write_feature_map`."""
    meta: dict[str, str] = {}
    indices: list[int] = []
    ids: list[int] = []
    names: list[str] = []
    types: list[str] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                meta[key.strip()] = value.strip()
            elif line == "\t".join(FEATURE_MAP_COLUMNS) or not line:
                continue
            else:
                parts = line.split("\t")
                if len(parts) != len(FEATURE_MAP_COLUMNS):
                    raise ValueError(f"{path}:{number}: expected {len(FEATURE_MAP_COLUMNS)} tab-separated fields")
                indices.append(int(parts[0]))
                ids.append(int(parts[1]))
                names.append(parts[2])
                types.append(parts[3])
    if "index_base" not in meta:
        raise ValueError(f"{path}: no '# index_base:' line")
    return FeatureMap(int(meta["index_base"]), meta.get("dimension", ""), indices, ids, names, types)


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
