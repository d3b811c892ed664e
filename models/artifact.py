"""Versioned model artifacts: one .npz holding the fitted arrays and a JSON metadata record.

The metadata names the tags (in order) and units, the detector spec, the fit
summary (training window, thresholds, the calibration report, the learned
per-tag rules), library versions, and a SHA-256 over all arrays and the
metadata itself, so a truncated or edited file is refused on load. This module
reads and writes files only; the detector builds itself from what `read`
returns (StreamingDetector.load), so neither reaches into the other.

Format 5 (this version) adds the adaptive baselines' parameters to the arrays,
the calibration report and the learned per-tag rules to the summary, and changes
how the defaults are fitted; a file of another version is refused with one line
that says to refit (format 3 arrays have another layout, and their thresholds
were calibrated by rules this version no longer uses).

>>> import tempfile, numpy as np
>>> path = Path(tempfile.mkdtemp()) / "m.npz"
>>> write(path, {"a": np.arange(3.0)}, {"tags": ["x"]})
>>> arrays, meta = read(path, ("a",))
>>> arrays["a"].tolist(), meta["tags"], meta["format_version"]
([0.0, 1.0, 2.0], ['x'], 5)
"""

import hashlib
import json
import os
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from models.errors import ModelError

FORMAT = "linesentry-model"
# Bumped whenever the array layout (kernels.TP_*) or the fitting rules change: 3 added the usable
# range, 4 the adaptive defaults and the calibration report, 5 the adaptive baselines (TP/TS sizes).
FORMAT_VERSION = 5
REFIT = "refit with `linesentry fit`"
META_KEY = "__meta__"


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _checksum(arrays: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    body = {k: v for k, v in meta.items() if k != "checksum"}
    h.update(json.dumps(body, sort_keys=True).encode())
    return h.hexdigest()


def write(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays + metadata atomically (temp file + rename): a crash never leaves half a model."""
    arrays = dict(arrays)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
            "versions": {d: _version(d) for d in ("linesentry", "numpy", "numba", "scikit-learn")}}
    meta["checksum"] = _checksum(arrays, meta)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path, required: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify an artifact: format, version, the `required` arrays and the checksum."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found: fit one with `linesentry fit` or fix the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except Exception as exc:  # any parse failure of a damaged file: zip, npy header, JSON, ...
        raise ModelError(f"model file {path} is unreadable or truncated ({type(exc).__name__}): "
                         "refit it or restore it from backup") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not a linesentry model file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"model file {path} has format version {meta.get('format_version')}, "
                         f"this linesentry reads version {FORMAT_VERSION}: {REFIT}")
    missing = [k for k in required if k not in arrays]
    if missing or meta.get("checksum") != _checksum(arrays, meta):
        raise ModelError(f"model file {path} failed its checksum (corrupted or edited): "
                         "refit it or restore it from backup")
    return {k: arrays[k] for k in required}, meta


def tag_mismatch(path, model_tags: list[str], config_tags: list[str]) -> str:
    missing = [t for t in config_tags if t not in model_tags]
    extra = [t for t in model_tags if t not in config_tags]
    if not missing and not extra:
        what = "the same tags in a different order"
    else:
        what = "; ".join(p for p in (
            f"config tags not in the model: {', '.join(missing)}" if missing else "",
            f"model tags not in the config: {', '.join(extra)}" if extra else "",
        ) if p)
    return f"model {path} does not match the configured tags ({what}): refit the model for this config"
