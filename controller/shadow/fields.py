"""The five fields the fleet may set, each with its shape check, what of it is not in effect
(`pending`, for the delta) and how it is applied: always through `Operations`, with the API's
validation, as user ``shadow:<by>`` in the engineer role, so every change is a journal event with
its origin. Nothing here can touch an interlock: no field names one, and an inhibit is
`Operations.inhibit_actions` with its reason rule (unknown actions refused, a reason to inhibit).

Order matters at start (`FIELDS`): shadow mode first (the safe direction before anything may
write), then inhibits, the model, the margin (it is checked against the model's threshold), and the
challenger last (checked against the model and the margin in force).

The model fields go through the line's model lifecycle (controller.lifecycle) when there is one:
`model_version` naming the running challenger promotes it in place, and any other promotion is
watched; `challenger` starts (or, null / "", stops) a challenge.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controller.api import MAX_REASON, printable
from controller.errors import BadRequest, NotFound
from controller.lifecycle.manager import already_active
from controller.shadow.document import Desired, DesiredError, finite_number

if TYPE_CHECKING:
    from controller.lifecycle.manager import ModelLifecycle
    from controller.operations import Operations

FIELDS = ("shadow_mode", "inhibits", "model_version", "threshold_margin", "challenger")
ROLE = "engineer"  # what the same change needs on the local API (controller.roles)
MAX_INHIBITS = 256
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")  # a file stem: no path, no leading dot
MODEL_ID = re.compile(r"^[0-9a-f]{12,64}$")  # a prefix of the artifact's SHA-256 (models.artifact)


@dataclass(frozen=True)
class Change:
    """One desired change being applied: who asked (its origin in the journal) and which version."""

    field: str
    desired: Desired
    again: bool = False  # the saved desired state, applied again at start

    @property
    def user(self) -> str:
        return f"shadow:{self.desired.by}"

    @property
    def reason(self) -> str:
        again = ", again at start" if self.again else ""
        return f"device shadow {self.field} v{self.desired.version}{again}"


class ShadowField(Protocol):
    name: str

    def check(self, value: Any) -> Any:
        """The value in its normal form, or DesiredError (the reported reason)."""

    def pending(self, value: Any, state: dict[str, Any]) -> Any:
        """The part of `value` the reported `state` does not show in effect; None when all of it is."""

    async def apply(self, value: Any, ops: Operations, change: Change) -> None:
        """Put `value` in effect; a LinesentryError (the API's refusal) rejects it."""


class ShadowMode:
    name = "shadow_mode"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise DesiredError(f"shadow_mode must be true or false, got {value!r}")
        return value

    def pending(self, value: bool, state: dict[str, Any]) -> bool | None:
        return None if state["shadow_mode"] == value else value

    async def apply(self, value: bool, ops: Operations, change: Change) -> None:
        ops.set_shadow_mode(value, change.user, change.reason, role=ROLE)


class ThresholdMargin:
    name = "threshold_margin"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any) -> float:
        if not finite_number(value):
            raise DesiredError(f"threshold_margin must be a number, got {value!r}")
        if not self.lo <= value <= self.hi:
            raise DesiredError(f"threshold_margin {value:g} is outside [{self.lo:g}, {self.hi:g}] "
                               "([mqtt.shadow] threshold_margin_min / threshold_margin_max)")
        return float(value)

    def pending(self, value: float, state: dict[str, Any]) -> float | None:
        return None if state["threshold_margin"] == value else value

    async def apply(self, value: float, ops: Operations, change: Change) -> None:
        ops.set_threshold_margin(value, change.user, change.reason, role=ROLE)


class Inhibits:
    """`{"<action>": {"inhibited": bool, "reason": "..."}}`: the actions named are set so, the others
    are left as they are (releasing one is `"inhibited": false`)."""

    name = "inhibits"

    def check(self, value: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict) or len(value) > MAX_INHIBITS:
            raise DesiredError(f"inhibits must be an object of at most {MAX_INHIBITS} actions "
                               '{"<action>": {"inhibited": true, "reason": "..."}}')
        out = {}
        for name, entry in value.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("inhibited"), bool) or set(entry) - {
                    "inhibited", "reason"} or not isinstance(entry.get("reason", ""), str):
                raise DesiredError(f"inhibits[{name!r}] must be "
                                   '{"inhibited": true|false, "reason": "..."}')
            # the API's reason rule: the journal keeps it and `linesentry events` prints it to a terminal
            reason = printable(entry.get("reason", "").strip(), f"inhibits[{name!r}].reason", MAX_REASON)
            out[name] = {"inhibited": entry["inhibited"], "reason": reason}
        return out

    def pending(self, value: dict[str, dict[str, Any]], state: dict[str, Any]) -> dict | None:
        now = state["inhibits"]
        missing = {n: e for n, e in value.items() if n not in now or now[n]["inhibited"] != e["inhibited"]}
        return missing or None

    async def apply(self, value: dict[str, dict[str, Any]], ops: Operations, change: Change) -> None:
        # the journal event names the desired version beside the fleet's reason (a release may have none)
        ops.inhibit_actions({n: (e["inhibited"], e["reason"]) for n, e in value.items()}, change.user,
                            role=ROLE, origin=change.reason)


class ModelVersion:
    """A model artifact in `models_dir`: by file name (``<value>.npz``) or by its SHA-256 (a prefix of
    12 or more hex digits, the id the reported state shows). Loaded as `linesentry model reload`."""

    name = "model_version"

    def __init__(self, models_dir: Path, registry: Path | None = None,
                 lifecycle: ModelLifecycle | None = None) -> None:
        self.models_dir, self.registry, self.lifecycle = models_dir, registry, lifecycle

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not MODEL_NAME.match(value):
            raise DesiredError(f"model_version must be a model file name in the models directory without "
                               f"the .npz (letters, digits, _ . -) or its id, got {value!r}")
        return value

    def pending(self, value: str, state: dict[str, Any]) -> str | None:
        return None if model_matches(value, state["model"]) else value

    async def apply(self, value: str, ops: Operations, change: Change) -> None:
        lc = self.lifecycle
        if lc is not None and model_matches(value, lc.challenger_ref() or {}):
            await lc.promote_challenger(change.user, change.reason)  # in place: no second fetch
            return
        path = await asyncio.to_thread(self.find, value)
        if lc is None:
            await ops.reload_model(change.user, str(path), change.reason, role=ROLE)
        else:
            await lc.reload(path, change.user, change.reason, again=change.again)

    def find(self, value: str) -> Path:
        """The artifact `value` names (NotFound if none); an id is looked up by the files' checksums,
        then fetched from the [models] registry when one is configured."""
        by_name = self.models_dir / f"{value}.npz"
        if by_name.is_file():
            return by_name
        if MODEL_ID.match(value):
            from models import artifact
            from models.errors import ModelError

            for path in sorted(self.models_dir.glob("*.npz")):
                try:
                    if artifact.read(path, ())[1]["checksum"].startswith(value):
                        return path
                except ModelError:
                    continue  # a damaged file is not the one asked for (loading it would say why)
            if self.registry is not None:
                return self.fetch(value)
        raise NotFound(f"no model {value!r} in {self.models_dir}: copy {value}.npz there first, or send the "
                       "version of a model it holds")

    def fetch(self, value: str) -> Path:
        """Copy the verified registry artifact of id / prefix `value` into models_dir as <id>.npz, all
        or nothing; NotFound (one line) when the registry or the models folder cannot give it."""
        from controller.atomicfile import copy_atomic
        from controller.registry import RegistryError, artifact_path
        from models import artifact
        from models.errors import ModelError

        assert self.registry is not None
        try:
            source = artifact_path(self.registry, value)  # name == checksum, loads
        except RegistryError as exc:
            raise NotFound(f"cannot fetch model {value!r}: {exc}") from None
        except OSError as exc:
            raise NotFound(f"cannot read model registry {self.registry}: {exc.strerror or exc}") from None
        target = self.models_dir / source.name
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            copy_atomic(source, target)
        except OSError as exc:
            raise NotFound(f"cannot copy model {source.stem[:12]} into {self.models_dir}: "
                           f"{exc.strerror or exc}") from None
        try:  # the copy is what gets loaded: verify it too (a registry changing under us)
            if artifact.read(target, ())[1].get("checksum") != source.stem:
                raise ModelError("its checksum is not its id")
        except (ModelError, OSError) as exc:
            target.unlink(missing_ok=True)
            raise NotFound(f"model {source.stem[:12]} copied from {self.registry} does not verify ({exc}): "
                           "push it again") from None
        return target


class ChallengerField:
    """A model run in shadow beside the active one (controller.lifecycle), named and fetched exactly as
    `model_version`; null or "" stops the challenge."""

    name = "challenger"

    def __init__(self, models: ModelVersion, lifecycle: ModelLifecycle) -> None:
        self.models, self.lifecycle = models, lifecycle

    def check(self, value: Any) -> str:
        if value is None or value == "":
            return ""
        if not isinstance(value, str) or not MODEL_NAME.match(value):
            raise DesiredError(f"challenger must be a model file name in the models directory without the "
                               f".npz, its id, or null / \"\" to stop the challenge, got {value!r}")
        return value

    def pending(self, value: str, state: dict[str, Any]) -> str | None:
        running = state["model"].get("challenger") or {}
        if not running.get("running"):
            return value or None
        return None if value and model_matches(value, running) else value

    async def apply(self, value: str, ops: Operations, change: Change) -> None:
        lc = self.lifecycle
        if not value:
            lc.stop_challenge(change.user, change.reason)
            return
        if model_matches(value, lc.challenger_ref() or {}):
            return
        if MODEL_ID.match(value) and model_matches(value, {"id": lc.active_ref()["id"]}):
            raise BadRequest(already_active(value))  # by id (a file name is judged by the id it loads)
        path = await asyncio.to_thread(self.models.find, value)
        await lc.start_challenge(path, change.user, change.reason)


def model_matches(value: str, model: dict[str, Any]) -> bool:
    """Whether the reported `model` ({"version", "id"}) is the one `value` names."""
    return value == model.get("version") or bool(
        MODEL_ID.match(value) and (model.get("id") or "").startswith(value))


def shadow_fields(models_dir: Path, margin_lo: float, margin_hi: float, registry: Path | None = None,
                  lifecycle: ModelLifecycle | None = None) -> dict[str, ShadowField]:
    """Every field, in `FIELDS` order (`registry`: [models] registry, where model_version fetches ids;
    without a `lifecycle` there is no challenger field)."""
    models = ModelVersion(models_dir, registry, lifecycle)
    made: list[ShadowField] = [ShadowMode(), Inhibits(), models, ThresholdMargin(margin_lo, margin_hi)]
    if lifecycle is not None:
        made.append(ChallengerField(models, lifecycle))
    return {f.name: f for f in made}
