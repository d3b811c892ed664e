"""Streaming anomaly detection: numba kernels, offline fitting, calibration and model artifacts.

Pure computation (numpy / numba / scikit-learn): no protocols, no asyncio, usable offline.
Names are resolved lazily (PEP 562), so `import models.spec` or `models.names` costs no
numba, scipy or scikit-learn; `models.detector` pulls numba, and only fitting pulls
scipy and scikit-learn.
"""

import importlib

_HOMES = {
    "BatchResult": "models.detector", "StreamingDetector": "models.detector",
    "load_model": "models.detector", "save_model": "models.detector",
    "ModelError": "models.errors", "NotFittedError": "models.errors",
    "DetectorSpec": "models.spec", "TagLimits": "models.spec", "spec_differences": "models.spec",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        try:  # a submodule: `from models import kernels`
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(home), name)
