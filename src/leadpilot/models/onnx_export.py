"""A trained model's booster as ONNX, and a scorer that runs it with ONNX Runtime (batch serving).

``export_onnx(model, path)`` writes the booster of a :class:`~leadpilot.models.pipeline.ScoringModel` as an
ONNX graph (``onnxmltools.convert_xgboost``): one float32 input ``input`` of ``len(model.feature_names)``
columns (the encoder's matrix, NaN = missing) and the output ``probabilities`` (n, 2). The encoder and
the calibrator stay in Python: :class:`OnnxScorer` returns the booster's raw probability per row, the same
as ``model.predict_raw`` (within float32 rounding, about 1e-7), and ``model.calibrate`` (or
:meth:`OnnxScorer.predict_proba` given the model's calibrator) turns it into the calibrated one.

Nothing is downloaded at run time: the export is made on request from a model already on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from leadpilot.models.pipeline import Calibrator, ScoringModel
from leadpilot.models.tabular import ModelDirectoryError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxModelError", "OnnxScorer", "export_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 15
_FINGERPRINT_KEY = "leadpilot_schema_fingerprint"
_FEATURES_KEY = "leadpilot_features"
_TARGET_KEY = "leadpilot_target"


class OnnxModelError(ModelDirectoryError):
    """An ONNX file that is missing, unreadable, not a leadpilot export, or made for another model."""


def export_onnx(model: ScoringModel, path: Path | str, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model``'s booster to ``path`` as ONNX (atomically: a temp file beside it, renamed); returns the path."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    path = Path(path)
    n_features = len(model.feature_names)
    if n_features == 0:
        raise OnnxModelError("the model has no features: nothing to export")
    booster = model.booster
    if booster.feature_names is not None:  # the converter reads trees that name features f0, f1, ...
        booster = booster.copy()
        booster.feature_names = None
        booster.feature_types = None
    onx = onnxmltools.convert_xgboost(
        booster, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))], target_opset=opset
    )
    outputs = [o.name for o in onx.graph.output]
    if OUTPUT_NAME not in outputs:
        raise OnnxModelError(f"the converter gave outputs {outputs}, not {OUTPUT_NAME!r}: cannot export this booster")
    props = {
        _FINGERPRINT_KEY: str(model.meta.get("schema_fingerprint", "")),
        _FEATURES_KEY: str(n_features),
        _TARGET_KEY: f"{model.target} = {model.positive_label}",
    }
    for key, value in props.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    onx.doc_string = f"leadpilot scoring model ({props[_TARGET_KEY]}): booster only, raw probabilities"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(onx.SerializeToString())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OnnxScorer:
    """Runs an exported booster with ONNX Runtime on the CPU (``threads`` intra-op threads, default 2)."""

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int = 2,
        calibrator: Calibrator | None = None,
        expected_features: int | None = None,
        expected_fingerprint: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.calibrator = calibrator
        if not self.path.is_file():
            raise OnnxModelError(f"no ONNX model at {self.path} (export one with leadpilot.models.onnx_export)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: no warnings on stderr
        try:
            self.session: Any = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            raise OnnxModelError(
                f"{self.path} is not a readable ONNX model ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from exc
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or OUTPUT_NAME not in outputs:
            raise OnnxModelError(
                f"{self.path} is not a leadpilot scoring export (inputs {[i.name for i in inputs]}, outputs {outputs})"
            )
        self.input_name = str(inputs[0].name)
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        self.n_features: int | None = width if isinstance(width, int) else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.fingerprint: str | None = meta.get(_FINGERPRINT_KEY)
        if self.n_features is None and meta.get(_FEATURES_KEY, "").isdigit():
            self.n_features = int(meta[_FEATURES_KEY])
        if expected_features is not None and self.n_features not in (None, expected_features):
            raise OnnxModelError(
                f"{self.path} takes {self.n_features} features but the model has {expected_features}: "
                "it was exported from another model; export this one again"
            )
        if expected_fingerprint and self.fingerprint and self.fingerprint != expected_fingerprint:
            raise OnnxModelError(
                f"{self.path} was exported from a model with another feature schema "
                f"({self.fingerprint}, the model has {expected_fingerprint}); export this one again"
            )

    @classmethod
    def for_model(cls, model: ScoringModel, path: Path | str, *, threads: int = 2) -> OnnxScorer:
        """The scorer of ``model``'s export at ``path`` (checked against its schema), with its calibrator."""
        return cls(
            path,
            threads=threads,
            calibrator=model.calibrator,
            expected_features=len(model.feature_names),
            expected_fingerprint=str(model.meta.get("schema_fingerprint") or "") or None,
        )

    def predict_raw(self, matrix: np.ndarray) -> np.ndarray:
        """The booster's uncalibrated probability per row of the encoder's float32 matrix (NaN = missing)."""
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-d matrix, got shape {matrix.shape}")
        if self.n_features is not None and matrix.shape[1] != self.n_features:
            raise ValueError(f"the matrix has {matrix.shape[1]} columns; {self.path} takes {self.n_features}")
        if matrix.shape[0] == 0:
            return np.zeros(0)
        probabilities = self.session.run([OUTPUT_NAME], {self.input_name: matrix})[0]
        return np.asarray(probabilities[:, 1], dtype=np.float64)

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (needs the model's calibrator: :meth:`for_model` passes it)."""
        if self.calibrator is None:
            raise ValueError("no calibrator: create the scorer with OnnxScorer.for_model(model, path)")
        return self.calibrator(self.predict_raw(matrix))
