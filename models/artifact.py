"""Versioned model artifacts: one .npz holding the fitted arrays and a JSON metadata record.

The metadata names the tags (in order) and units, the detector spec, the
training window, thresholds, library versions, and a SHA-256 over all arrays
and the metadata itself, so a truncated or edited file is refused on load.
"""

import hashlib
import json
import os
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from models.detector import MODEL_ARRAYS, StreamingDetector
from models.errors import ModelError
from models.kernels import TP_SIZE
from models.spec import DetectorSpec

FORMAT = "linesentry-model"
# Bumped whenever the array layout (kernels.TP_*) changes: 3 added the usable range.
FORMAT_VERSION = 3
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


def save_model(det: StreamingDetector, path) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a model behind."""
    det._require_model()
    if not det.fitted:
        raise ValueError("a rules-only detector has nothing fitted to save")
    arrays = {k: det.model[k] for k in MODEL_ARRAYS}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tags": det.tags,
        "units": det.units,
        "spec": det.spec.to_dict(),
        "summary": det.summary,
        "versions": {d: _version(d) for d in ("linesentry", "numpy", "numba", "scikit-learn")},
    }
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


def load_model(path, expected_tags: list[str] | None = None) -> StreamingDetector:
    """Load and verify a model; refuse a corrupt file or one fitted for other tags."""
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
    missing = [k for k in MODEL_ARRAYS if k not in arrays]
    if missing or meta.get("checksum") != _checksum(arrays, meta):
        raise ModelError(f"model file {path} failed its checksum (corrupted or edited): "
                         "refit it or restore it from backup")
    tags = meta["tags"]
    if arrays["tag_params"].shape != (len(tags), TP_SIZE):
        raise ModelError(f"model file {path} has tag parameters of shape {arrays['tag_params'].shape}, "
                         f"expected ({len(tags)}, {TP_SIZE}): {REFIT}")
    if expected_tags is not None and list(expected_tags) != tags:
        raise ModelError(_tag_mismatch(path, tags, list(expected_tags)))
    try:
        spec = DetectorSpec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model file {path} has detector settings this linesentry cannot use "
                         f"({exc}): {REFIT}") from None
    det = StreamingDetector(tags, spec, meta.get("units"))
    det.model = {k: arrays[k] for k in MODEL_ARRAYS}
    det.summary = meta.get("summary", {})
    det.fitted = True
    det.metadata = meta
    det.reset()
    return det


def _tag_mismatch(path: Path, model_tags: list[str], config_tags: list[str]) -> str:
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
