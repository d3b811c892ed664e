"""The model registry: a directory of artifacts addressed by their checksum, plus deployment logs.

Just files (a local directory, an NFS mount or an object-store FUSE prefix), so any host that can
read the directory can serve it and no registry server exists to fail:

    <registry>/artifacts/<id>.npz               the artifact; its name is its own checksum (the model id)
    <registry>/artifacts/<id>.json              what `linesentry model push` recorded about it
    <registry>/deployments/<site>/<line>.jsonl  append-only log of promotions, challenges and rollbacks

Every write is atomic (temp file, fsync, rename) or an fsynced append, so a kill -9 leaves the old
state or the new one; a reader verifies file name == checksum == the id asked for before it trusts
an artifact, and skips the torn last line a killed append can leave in a log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from controller.atomicfile import copy_atomic, write_atomic
from controller.errors import LinesentryError
from models import artifact
from models.errors import ModelError

ID_LENGTH = 64
MIN_PREFIX = 12
_HEX = re.compile(r"[0-9a-f]+")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
DEPLOY_ACTIONS = ("promote", "challenge", "rollback")


class RegistryError(LinesentryError, ValueError):
    """The registry, an id or an artifact cannot be used; the message is one line saying what to do."""

    status = 400


def is_model_id(text: str) -> bool:
    """Whether `text` looks like a model id or an id prefix (12..64 lowercase hex digits)."""
    return MIN_PREFIX <= len(text) <= ID_LENGTH and _HEX.fullmatch(text) is not None


def artifacts_dir(registry: Path) -> Path:
    return Path(registry) / "artifacts"


def _existing(registry: Path) -> Path:
    registry = Path(registry)
    if not artifacts_dir(registry).is_dir():
        if registry.is_dir():
            raise RegistryError(f"{registry} is not a model registry (no artifacts/ folder): "
                                "push a model into it with `linesentry model push FILE --registry DIR`")
        raise RegistryError(f"model registry {registry} not found: check --registry or LINESENTRY_REGISTRY")
    return registry


def _verified(path: Path) -> dict:
    """The metadata of the artifact at `path` once it loads and its name is its own checksum."""
    try:
        _, meta = artifact.read(path, ())
    except ModelError as exc:
        raise RegistryError(f"registry artifact {path.name} is damaged ({exc}); "
                            "push the model again from its original file") from None
    if meta.get("checksum") != path.stem:
        raise RegistryError(f"registry artifact {path.name} holds model {str(meta.get('checksum'))[:12]}..., "
                            "not the one its name says: delete it and push the model again")
    return meta


def resolve_id(registry: Path, model_id: str) -> str:
    """The full id of `model_id` (a full id or a unique prefix of >= 12 hex digits) in the registry."""
    registry = _existing(registry)
    want = model_id.strip().lower()
    if not is_model_id(want):
        raise RegistryError(f"{model_id!r} is not a model id: give the id `linesentry model list` shows "
                            f"(at least {MIN_PREFIX} hex digits)")
    found = sorted(p.stem for p in artifacts_dir(registry).glob(f"{want}*.npz")
                   if len(p.stem) == ID_LENGTH and _HEX.fullmatch(p.stem))
    if not found:
        raise RegistryError(f"model {want} is not in registry {registry}: "
                            "push it with `linesentry model push FILE` or check `linesentry model list`")
    if len(found) > 1:
        raise RegistryError(f"model id prefix {want} is ambiguous in {registry} ({len(found)} models: "
                            f"{', '.join(f[:16] for f in found[:4])}...): give more hex digits")
    return found[0]


def artifact_path(registry: Path, model_id: str) -> Path:
    """The verified artifact of `model_id` (full id or unique prefix): it loads, and its file name,
    its checksum and the id asked for agree. RegistryError (one line) otherwise."""
    full = resolve_id(registry, model_id)
    path = artifacts_dir(registry) / f"{full}.npz"
    _verified(path)
    return path


def _record(meta: dict, *, name: str, source: str, note: str, by: str, at: float) -> dict:
    summary = meta.get("summary") or {}
    cal = summary.get("calibration") or {}
    return {
        "id": meta["checksum"], "name": name, "pushed_at": at, "pushed_by": by, "source": source,
        "note": note, "tags": list(meta.get("tags") or []), "units": dict(meta.get("units") or {}),
        "threshold_on": summary.get("threshold_on"),
        "calibration": {
            "rows": summary.get("rows"), "time_start": summary.get("time_start"),
            "time_end": summary.get("time_end"), "designed_far": cal.get("designed_far"),
            "holdout_exceedance": cal.get("holdout_exceedance"), "floored": cal.get("floored"),
            "pinned_at_cap": cal.get("pinned_at_cap"), "warnings": list(cal.get("warnings") or []),
        },
    }


def default_user() -> str:
    for key in ("LINESENTRY_USER", "USER", "LOGNAME"):
        if os.environ.get(key):
            return os.environ[key]
    return "unknown"


def push(registry: Path, source: Path, *, name: str | None = None, note: str = "",
         by: str | None = None, now: float | None = None) -> tuple[dict, bool]:
    """Copy a model artifact into the registry under its checksum and record its metadata.

    Returns (record, added); pushing a model already there changes nothing (added False). A file
    that does not load (truncated, edited, not a model) is refused before anything is written."""
    registry, source = Path(registry), Path(source)
    try:
        _, meta = artifact.read(source, ())
    except ModelError as exc:
        raise RegistryError(f"cannot push {source}: {exc}") from None
    model_id = meta["checksum"]
    if not registry.is_dir() and not registry.parent.is_dir():
        raise RegistryError(f"model registry {registry} not found and its parent folder does not exist: "
                            "check --registry or LINESENTRY_REGISTRY")
    folder = artifacts_dir(registry)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create {folder}: {exc.strerror or exc}") from None
    target, meta_path = folder / f"{model_id}.npz", folder / f"{model_id}.json"
    existing = load_record(registry, model_id)
    if target.is_file():
        try:
            _verified(target)
            if existing is not None:
                return existing, False
        except RegistryError:
            pass  # a damaged copy: replace it with the good one below
    try:
        for leftover in (target, meta_path):
            for tmp in folder.glob(f"{leftover.name}*.tmp"):
                with contextlib.suppress(OSError):
                    if time.time() - tmp.stat().st_mtime > 3600:  # never a running push's temp file
                        tmp.unlink()
        copy_atomic(source, target)
        _verified(target)
        record = _record(meta, name=name or source.stem, source=source.name, note=note,
                         by=by or default_user(), at=time.time() if now is None else now)
        write_atomic(meta_path, json.dumps(record, indent=1, sort_keys=True) + "\n", mode=0o644)
    except OSError as exc:
        raise RegistryError(f"cannot write to registry {registry}: {exc.strerror or exc}") from None
    return record, True


def load_record(registry: Path, model_id: str) -> dict | None:
    """The push metadata of the model `model_id` (full id), None when absent or unreadable."""
    path = artifacts_dir(registry) / f"{model_id}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("id") == model_id else None


def list_models(registry: Path) -> list[dict]:
    """Every model in the registry, oldest push first. An artifact without readable metadata (a push
    killed between the two files) is listed with name "?" so it is seen, not hidden."""
    registry = _existing(registry)
    out = []
    for path in artifacts_dir(registry).glob("*.npz"):
        if len(path.stem) != ID_LENGTH or not _HEX.fullmatch(path.stem):
            continue
        record = load_record(registry, path.stem)
        if record is None:
            record = {"id": path.stem, "name": "?", "pushed_at": path.stat().st_mtime, "pushed_by": "?",
                      "note": "no metadata: push the model again", "tags": []}
        out.append(record)
    return sorted(out, key=lambda r: (_pushed_at(r), r["id"]))


def _pushed_at(record: dict) -> float:
    """The push time for sorting; a hand-edited or foreign record's garbage sorts first, not a crash."""
    try:
        return float(record.get("pushed_at") or 0.0)
    except (TypeError, ValueError):
        return 0.0


# ------------------------------------------------------------------ deployment logs
def parse_line(text: str) -> tuple[str, str]:
    """SITE/LINE -> (site, line); both names safe as folder and file names."""
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise RegistryError(f"--line {text!r} is not SITE/LINE (letters, digits, '_', '-', '.'; "
                            "e.g. plant1/line3)")
    return parts[0], parts[1]


def deployment_log(registry: Path, site: str, line: str) -> Path:
    return Path(registry) / "deployments" / site / f"{line}.jsonl"


def log_deployment(registry: Path, site: str, line: str, entry: dict) -> None:
    """Append one deployment record (one JSON line, fsynced). A torn last line left by a killed
    append is closed first, so it never swallows this record."""
    if entry.get("action") not in DEPLOY_ACTIONS:
        raise ValueError(f"deployment action must be one of {DEPLOY_ACTIONS}")
    path = deployment_log(registry, site, line)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            lead = b""
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    lead = b"" if f.read(1) == b"\n" else b"\n"
            os.write(fd, lead + json.dumps(entry, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise RegistryError(f"cannot write the deployment log {path}: {exc.strerror or exc}") from None


def read_deployments(registry: Path, site: str, line: str) -> list[dict]:
    """The deployment records of one line, oldest first; unparseable lines (a torn append) skipped."""
    path = deployment_log(registry, site, line)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RegistryError(f"cannot read the deployment log {path}: {exc.strerror or exc}") from None
    out = []
    for text in raw.split(b"\n"):
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if (isinstance(entry, dict) and isinstance(entry.get("id"), str)
                and entry.get("action") in DEPLOY_ACTIONS):
            out.append(entry)
    return out


def rollback_target(entries: list[dict], current: str | None) -> str | None:
    """The model to go back to from `current`, by the deployment log: the `previous` recorded when
    `current` was deployed, else the latest deployed model that is not `current`. None: nothing to go to."""
    deployed = [e for e in entries if e["action"] in ("promote", "rollback")]
    if current is None and deployed:
        current = deployed[-1]["id"]
    for e in reversed(deployed):
        if e["id"] == current:
            prev = e.get("previous")
            if isinstance(prev, str) and prev and prev != current:
                return prev
            break
    for e in reversed(deployed):
        if e["id"] != current:
            return e["id"]
    return None
