"""Feature export: LibSVM round-trips through scikit-learn, XGBoost and LightGBM to the same matrix; Parquet too."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pyarrow.parquet as pq
import pytest
import xgboost
from scipy import sparse
from sklearn.datasets import load_svmlight_file

from leadpilot.features.dictionary import Dimension, FeatureDictionary, Function, load_default
from leadpilot.features.export import companion_paths, read_feature_map, write_libsvm, write_parquet
from leadpilot.features.store import FeatureMatrix

# Values that only survive a text round trip when written exactly (repr), plus integers, negatives, tiny ones.
VALUES = [1.0, 0.1 + 0.2, 1 / 3, -2.5, 123456789.12345679, 1e-7, 7.0, 2.0**-40, 42.0, 0.5]


@pytest.fixture(scope="module")
def dictionary() -> FeatureDictionary:
    return load_default()


@pytest.fixture(scope="module")
def matrix(dictionary: FeatureDictionary) -> FeatureMatrix:
    """9 leads × 6 real lead features; rows 0, 4 and 8 are empty, and every column has a value."""
    ids = np.array([d.id for d in dictionary.for_dimension(Dimension.LEAD)][:6], dtype=np.int32)
    rows = [1, 1, 2, 3, 3, 3, 5, 6, 7, 7]
    cols = [0, 5, 3, 1, 2, 4, 5, 0, 2, 5]
    csr = sparse.csr_matrix((VALUES, (rows, cols)), shape=(9, len(ids)))
    keys = np.column_stack([np.arange(100, 109), np.zeros(9, dtype=np.int64)]).astype(np.int64)
    return FeatureMatrix(Dimension.LEAD, keys, ids, csr)


LABELS = np.array([0, 1, 0, 2, 1, 0, 3, 0, 1.5])
QIDS = np.array([7, 7, 7, 3, 3, 9, 9, 9, 1])


def _write(tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary, **kwargs: Any) -> Path:
    path = tmp_path / "leads.svm"
    write_libsvm(matrix, path, dictionary=dictionary, **kwargs)
    return path


def _assert_same_csr(got: sparse.csr_matrix, want: sparse.csr_matrix, dtype: Any = np.float64) -> None:
    got, want = sparse.csr_matrix(got), sparse.csr_matrix(want)
    got.sort_indices()
    want.sort_indices()
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data.astype(dtype))


def _xgb_matrix(path: Path, index_base: int) -> xgboost.DMatrix:
    uri = f"{path}?format=libsvm" + ("&indexing_mode=1" if index_base == 1 else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XGBoost >= 3.1 deprecates text input but still reads it
        return xgboost.DMatrix(uri)


def test_lines_are_label_then_sorted_dense_indices(
    tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary
) -> None:
    path = _write(tmp_path, matrix, dictionary)
    lines = path.read_text().splitlines()
    assert len(lines) == 9
    assert lines[0] == "0" and lines[4] == "0" and lines[8] == "0"  # entities without features keep their line
    assert lines[1] == f"0 0:1 5:{0.1 + 0.2!r}"
    assert lines[2] == f"0 3:{1 / 3!r}"
    assert lines[3] == "0 1:-2.5 2:123456789.12345679 4:1e-07"
    for line in lines:
        indices = [int(cell.split(":")[0]) for cell in line.split()[1:]]
        assert indices == sorted(indices) and all(0 <= i < 6 for i in indices)
    keys_path, _, _ = companion_paths(path)
    assert keys_path.read_text().splitlines() == ["k1,k2", *[f"{k},0" for k in range(100, 109)]]


def test_unsorted_csr_input_is_written_sorted(tmp_path: Path, dictionary: FeatureDictionary) -> None:
    csr = sparse.csr_matrix((np.array([3.0, 1.0]), np.array([4, 1]), np.array([0, 2])), shape=(1, 5))
    assert not csr.has_sorted_indices
    m = FeatureMatrix(Dimension.LEAD, np.array([[1, 0]]), np.arange(1, 6, dtype=np.int32) * 10, csr)
    path = tmp_path / "u.svm"
    write_libsvm(m, path, index_base=1)
    assert path.read_text() == "0 2:1 5:3\n"


@pytest.mark.parametrize("index_base", [0, 1])
def test_feature_map_states_index_base_and_derived_ids(
    tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary, index_base: int
) -> None:
    path = _write(tmp_path, matrix, dictionary, index_base=index_base)
    _, map_path, fmap_path = companion_paths(path)
    text = map_path.read_text().splitlines()
    assert text[:3] == [f"# index_base: {index_base}", "# dimension: lead", "index\tfeature_id\tname\ttype"]
    first = dictionary.by_id(int(matrix.feature_ids[0]))
    kind = "int" if first.function in (Function.COUNT, Function.DISTINCT_COUNT) else "q"
    assert text[3] == f"{index_base}\t{first.id}\t{first.name}\t{kind}"
    fm = read_feature_map(map_path)
    assert fm.index_base == index_base and fm.dimension == "lead" and fm.n_features == 6
    assert fm.indices == list(range(index_base, index_base + 6))
    assert fm.feature_ids == matrix.feature_ids.tolist()
    assert fm.names == [dictionary.by_id(int(i)).name for i in matrix.feature_ids]
    # The XGBoost feature map numbers XGBoost's columns, which start at 0 whatever the file's index base.
    assert fmap_path.read_text().splitlines() == [
        f"{c}\t{n}\t{t}" for c, n, t in zip(range(6), fm.names, fm.types, strict=True)
    ]


@pytest.mark.parametrize("index_base", [0, 1])
@pytest.mark.parametrize("with_qid", [False, True])
def test_scikit_learn_loads_the_same_matrix(
    tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary, index_base: int, with_qid: bool
) -> None:
    path = _write(tmp_path, matrix, dictionary, labels=LABELS, qids=QIDS if with_qid else None, index_base=index_base)
    fm = read_feature_map(companion_paths(path)[1])
    loaded = load_svmlight_file(
        str(path), n_features=fm.n_features, zero_based=fm.index_base == 0, query_id=with_qid, dtype=np.float64
    )
    _assert_same_csr(loaded[0], matrix.matrix)  # exact: every float came back bit for bit
    np.testing.assert_array_equal(loaded[1], LABELS)
    if with_qid:
        np.testing.assert_array_equal(loaded[2], QIDS)
        assert path.read_text().splitlines()[0] == "0 qid:7"


@pytest.mark.parametrize("index_base", [0, 1])
def test_xgboost_loads_the_same_matrix(
    tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary, index_base: int
) -> None:
    path = _write(tmp_path, matrix, dictionary, labels=LABELS, index_base=index_base)
    dmatrix = _xgb_matrix(path, index_base)
    assert (dmatrix.num_row(), dmatrix.num_col()) == matrix.shape
    _assert_same_csr(dmatrix.get_data(), matrix.matrix, np.float32)  # XGBoost keeps float32
    np.testing.assert_array_equal(dmatrix.get_label(), LABELS.astype(np.float32))


def test_xgboost_reads_qid_groups_and_the_feature_map(
    tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary
) -> None:
    path = _write(tmp_path, matrix, dictionary, labels=LABELS, qids=QIDS)
    dmatrix = _xgb_matrix(path, 0)
    _assert_same_csr(dmatrix.get_data(), matrix.matrix, np.float32)
    np.testing.assert_array_equal(dmatrix.get_group(), [3, 2, 3, 1])  # rows per qid, in file order
    booster = xgboost.train({"max_depth": 2, "nthread": 1, "min_child_weight": 0}, dmatrix, num_boost_round=2)
    names = read_feature_map(companion_paths(path)[1]).names
    dump = "\n".join(booster.get_dump(fmap=str(companion_paths(path)[2])))
    assert any(name in dump for name in names) and "[f" not in dump


def test_lightgbm_loads_the_same_matrix(tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary) -> None:
    path = _write(tmp_path, matrix, dictionary, labels=LABELS)
    params = {
        "verbose": -1,
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
        "min_data_in_leaf": 1,
        "min_data_in_bin": 1,
        "num_leaves": 4,
    }
    from_file = lightgbm.Dataset(str(path), params=params).construct()
    in_memory = lightgbm.Dataset(matrix.matrix, label=LABELS, params=params).construct()
    assert (from_file.num_data(), from_file.num_feature()) == matrix.shape
    np.testing.assert_array_equal(from_file.get_label(), LABELS)
    # LightGBM keeps no raw values, only bins: the same bins per feature and the same model mean the same values.
    for f in range(matrix.shape[1]):
        assert from_file.feature_num_bin(f) == in_memory.feature_num_bin(f)
    a = lightgbm.train(params, from_file, num_boost_round=3)
    b = lightgbm.train(params, in_memory, num_boost_round=3)
    assert a.dump_model()["feature_infos"] == b.dump_model()["feature_infos"]  # per-feature [min:max]
    np.testing.assert_array_equal(a.predict(matrix.matrix), b.predict(matrix.matrix))


def test_lightgbm_reads_index_base_1_with_an_empty_column_0(
    tmp_path: Path, matrix: FeatureMatrix, dictionary: FeatureDictionary
) -> None:
    path = _write(tmp_path, matrix, dictionary, labels=LABELS, index_base=1)
    ds = lightgbm.Dataset(str(path), params={"verbose": -1, "num_threads": 1}).construct()
    assert (ds.num_data(), ds.num_feature()) == (matrix.shape[0], matrix.shape[1] + 1)  # LightGBM is zero-based


def test_floats_keep_full_precision(tmp_path: Path) -> None:
    values = np.array([0.1 + 0.2, 1 / 3, np.pi * 1e12, -1e-300, 5e-324, 1.7976931348623157e308, 2.0**53 + 2, 3.0])
    m = FeatureMatrix(
        Dimension.LEAD,
        np.column_stack([np.arange(8), np.zeros(8, np.int64)]),
        np.array([90113], np.int32),
        sparse.csr_matrix(values.reshape(-1, 1)),
    )
    path = tmp_path / "p.svm"
    write_libsvm(m, path, labels=values)
    X, y = load_svmlight_file(str(path), n_features=1, zero_based=True)
    np.testing.assert_array_equal(X.toarray().ravel(), values)
    np.testing.assert_array_equal(y, values)
    assert path.read_text().splitlines()[-1] == "3 0:3"


def test_empty_matrix_is_one_label_per_line(tmp_path: Path, dictionary: FeatureDictionary) -> None:
    m = FeatureMatrix(
        Dimension.LEAD,
        np.array([[1, 0], [2, 0], [3, 0]]),
        np.array([90113, 90123], np.int32),
        sparse.csr_matrix((3, 2)),
    )
    path = tmp_path / "e.svm"
    write_libsvm(m, path, labels=[1, 0, 2], qids=[5, 5, 6], dictionary=dictionary)
    assert path.read_text() == "1 qid:5\n0 qid:5\n2 qid:6\n"
    X, y, q = load_svmlight_file(str(path), n_features=2, zero_based=True, query_id=True)
    assert X.shape == (3, 2) and X.nnz == 0
    np.testing.assert_array_equal(y, [1, 0, 2])
    np.testing.assert_array_equal(q, [5, 5, 6])


def test_bad_arguments_are_refused(tmp_path: Path, matrix: FeatureMatrix) -> None:
    path = tmp_path / "x.svm"
    with pytest.raises(ValueError, match="index_base"):
        write_libsvm(matrix, path, index_base=2)
    with pytest.raises(ValueError, match="labels"):
        write_libsvm(matrix, path, labels=[1, 2])
    with pytest.raises(ValueError, match="labels"):
        write_libsvm(matrix, path, labels=[np.nan] * 9)
    with pytest.raises(ValueError, match="adjacent"):
        write_libsvm(matrix, path, qids=[1, 1, 2, 2, 1, 3, 3, 3, 3])
    with pytest.raises(ValueError, match="non-negative integers"):
        write_libsvm(matrix, path, qids=np.full(9, 0.5))
    assert not path.exists()


def test_without_a_dictionary_names_come_from_ids(tmp_path: Path, matrix: FeatureMatrix) -> None:
    path = tmp_path / "n.svm"
    write_libsvm(matrix, path)
    fm = read_feature_map(companion_paths(path)[1])
    assert fm.names == [f"feature_{i}" for i in matrix.feature_ids] and set(fm.types) == {"q"}


def test_parquet_round_trip_gives_the_same_triples(tmp_path: Path, matrix: FeatureMatrix) -> None:
    path = tmp_path / "leads.parquet"
    write_parquet(matrix, path)
    table = pq.read_table(path)
    coo = matrix.matrix.tocoo()
    want = sorted(
        zip(
            matrix.keys[coo.row, 0].tolist(),
            matrix.keys[coo.row, 1].tolist(),
            matrix.feature_ids[coo.col].tolist(),
            coo.data.tolist(),
            strict=True,
        )
    )
    got = sorted(zip(*(table.column(c).to_pylist() for c in ("k1", "k2", "feature_id", "value")), strict=True))
    assert got == want and len(got) == len(VALUES)
