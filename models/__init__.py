"""Streaming anomaly detection: numba kernels, offline fitting, calibration and model artifacts.

Pure computation (numpy / numba / scikit-learn): no protocols, no asyncio, usable offline.
"""

from models.artifact import ModelError, load_model, save_model
from models.detector import BatchResult, NotFittedError, StreamingDetector
from models.spec import DetectorSpec, TagLimits, spec_differences

__all__ = ["BatchResult", "DetectorSpec", "ModelError", "NotFittedError", "StreamingDetector",
           "TagLimits", "load_model", "save_model", "spec_differences"]
