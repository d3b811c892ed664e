"""The operations facade the local API (controller.api) and the CLI talk to: read views and
operator requests.

Each request answers what it did and, where it takes a protection away, what it disables; the
API makes the change durable (`persist`) before it answers. Mistakes are typed errors
(controller.errors): NotFound (404), BadRequest (400), Refused (409, refused in the current
state), ModelLoadError (422).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from controller.errors import BadRequest, ModelLoadError, NotFound, NotSaved, Refused
from controller.metrics import build_labels
from controller.persistence import clock_text

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from controller.actions import ActionEngine
    from controller.alarms import AlarmEngine
    from controller.config import LineConfig
    from controller.events import EventLog
    from controller.journal import Journal
    from controller.linestate import LineState
    from controller.modelload import ModelLoader
    from controller.persistence import StateKeeper
    from controller.pipeline import StepPipeline
    from controller.plc_health import PlcHealth
    from controller.points import Identity


def require_reason(reason: str, what: str) -> None:
    """A reason of visible characters (not blanks, control or format characters) is required."""
    if not any(c.isprintable() and not c.isspace() and unicodedata.category(c) != "Cf" for c in reason):
        raise BadRequest(f"a reason is required to {what}: send \"reason\" (CLI: --reason TEXT)")


class Operations:
    """Read views and operator requests over the running controller's parts."""

    def __init__(self, config: LineConfig, *, identity: Identity, line: LineState, pipeline: StepPipeline,
                 health: PlcHealth, journal: Journal, keeper: StateKeeper, models: ModelLoader,
                 reasons: dict[str, str], events: EventLog, registry: CollectorRegistry,
                 cloud: Callable[[], dict], started_at: Callable[[], float]) -> None:
        self.config, self.identity, self.line, self.pipeline = config, identity, line, pipeline
        self.health, self.journal, self.keeper, self.models = health, journal, keeper, models
        self.reasons, self.events, self.registry = reasons, events, registry
        self._cloud, self._started_at = cloud, started_at
        self.mqtt: Callable[[], dict] | None = None  # with [mqtt]: the link's and Sparkplug node's status
        self.history: Callable[[], dict] | None = None  # the history recorder's counters (controller.history)
        # what identifies this configuration (the device shadow and Sparkplug report it): its canonical dump
        self.config_hash = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True,
                                                     default=str).encode()).hexdigest()

    @property
    def alarms(self) -> AlarmEngine:
        return self.pipeline.alarms

    @property
    def actions(self) -> ActionEngine:
        return self.pipeline.actions

    # ------------------------------------------------------------------ views
    def status(self) -> dict:
        p, c = self.pipeline, self.config.controller
        cloud = self._cloud()
        return {
            "controller": {"site": self.identity.site, "line": self.identity.line,
                           "name": self.identity.controller, "started_at": self._started_at(),
                           "shadow": self.actions.shadow_global, "config_shadow": c.shadow,
                           "config_hash": self.config_hash, "version": build_labels()["version"]},
            "plcs": [self.health.status(plc) for plc in self.health.plcs],
            "detector": {"model": str(self.models.path) if self.models.path else None,
                         "model_id": p.detector.metadata.get("checksum") if p.detector else None,
                         "tags": p.detector_tags, "score": float(p.line_score), "alarm": bool(p.line_alarm),
                         "threshold": p.detector.threshold if p.detector else None,
                         "model_threshold": p.model_threshold, "threshold_margin": p.threshold_margin,
                         "explanation": p.explanation,
                         "step_p50_us": p.step_latency.percentiles([50])[0] * 1e6,
                         "step_p99_us": p.step_latency.percentiles([99])[0] * 1e6},
            "alarms": {"active": list(self.alarms.active()), "first_out": p.first_out},
            "actions": self.actions.status(),
            "protections_disabled": self.protections_disabled(),
            "restored": list(self.keeper.restored),
            "events": {"last_id": self.events.last_id},
            "outbox": cloud["outbox"],
            "sync": cloud["sync"],
            "mqtt": self.mqtt() if self.mqtt is not None else None,
            "history": self.history() if self.history is not None else None,
        }

    def tags(self) -> list[dict]:
        return self.line.snapshot()

    def alarm_list(self) -> list[dict]:
        """Every alarm; a line alarm with the explanation from when it last fired (else null)."""
        why = self.pipeline.alarm_explanations
        return [{**a, "explanation": why.get(a["name"])} for a in self.alarms.status()]

    def metrics_snapshot(self) -> dict:
        plcs = []
        for p in self.health.plcs:
            s = p.driver.stats
            lat = np.asarray(s.read_latency_s[-256:]) if s.read_latency_s else np.zeros(0)
            plcs.append({"name": p.name, "state": p.state.value,
                         "stats": {k: getattr(s, k) for k in ("reads", "read_errors", "writes",
                                                             "write_errors", "values", "bad_values",
                                                             "sessions_created")},
                         "read_latency": ({q: float(np.quantile(lat, float(q))) for q in ("0.5", "0.99")}
                                          if lat.size else {})})
        cloud = self._cloud()
        return {"plcs": plcs, "alarms": self.alarms.status(), "line_score": float(self.pipeline.line_score),
                "line_threshold": self.pipeline.detector.threshold if self.pipeline.detector else None,
                "action_counts": dict(self.journal.action_counts), "outbox": cloud["outbox"],
                "protections_disabled": self.protections_disabled(), "sync": cloud["sync"] or {}}

    def protections_disabled(self) -> list[dict]:
        """Every protection that will not act now: alarms that drive actions but are shelved or out
        of service, inhibited, latched and shadow actions. Each with a one-line description."""
        out: list[dict] = []
        for a in self.alarms.status():
            acts = self._actions_of(a["name"])
            if not acts or a["state"] not in ("SHELVED", "OUT_OF_SERVICE"):
                continue
            kind = "shelved" if a["state"] == "SHELVED" else "out_of_service"
            reason = self.reasons.get(f"alarm:{a['name']}", "")
            until = f" until {clock_text(a['shelved_until'])}" if a["shelved_until"] else ""
            for act in acts:
                out.append({"kind": kind, "action": act, "alarm": a["name"], "reason": reason,
                            "message": f"{act} disabled: {a['name']} {kind.replace('_', ' ')}{until}"
                                       + (f" ({reason})" if reason else "")})
        latched_at = {n: s["latched_at"] for n, s in self.actions.snapshot()["actions"].items()}
        for act in self.actions.status():
            name = act["name"]
            if act["inhibited"]:
                reason = self.reasons.get(f"action:{name}", "")
                out.append({"kind": "inhibited", "action": name, "by": act["inhibited_by"], "reason": reason,
                            "message": f"{name} inhibited by {act['inhibited_by'] or 'operator'}"
                                       + (f" ({reason})" if reason else "")})
            if act["latched"]:
                since = latched_at.get(name)
                out.append({"kind": "latched", "action": name, "since": since,
                            "message": f"{name} latched" + (f" since {clock_text(since)}" if since else "")
                                       + ": reset to re-arm"})
            if act["shadow"]:
                out.append({"kind": "shadow", "action": name,
                            "message": f"{name} in shadow mode: decides but never writes"})
        p = self.pipeline
        if p.threshold_margin > 1.0 and p.detector is not None:  # a less sensitive line alarm
            out.append({"kind": "threshold_margin", "margin": p.threshold_margin,
                        "message": f"line alarm threshold raised x{p.threshold_margin:g} "
                                   f"({p.model_threshold:.4g} -> {p.detector.threshold:.4g})"})
        return out

    # ------------------------------------------------------------------ operator requests
    # Each takes the acting identity: `user` and `role` (a controller.roles value, given by the API)
    # go into the event with the reason. A request that changes nothing answers "changed": false
    # and says why (already acknowledged, not latched, ...); it records no event.
    def ack(self, name: str, user: str, reason: str = "", *, role: str = "operator") -> dict:
        name = self._alarm_name(name)
        events = self.alarms.ack(name, user, self._wall())
        if not events:
            state = self.alarms.state(name)
            why = "already acknowledged" if str(state) == "ACKED" else f"is {state}: nothing to acknowledge"
            return self._answer(f"{name} {why}", alarm=name, changed=False)
        self.journal.record_operator(events, reason, role)
        return self._answer(f"{name} acknowledged", alarm=name)

    def shelve(self, name: str, user: str, seconds: float, reason: str, *, role: str = "operator") -> dict:
        alarm = self._alarm_settings(name)
        require_reason(reason, f"shelve {name}")
        if not alarm.shelvable:
            raise Refused(self._not_shelvable(alarm.name, "shelved"))
        if seconds > alarm.max_shelve_s:
            raise BadRequest(f"{name} can be shelved for at most {alarm.max_shelve_s:g} s")
        self.journal.record_operator(self.alarms.shelve(name, user, self._wall(), seconds), reason, role)
        self.reasons[f"alarm:{name}"] = reason
        return self._answer(f"{name} shelved for {seconds:g} s", alarm=name,
                            disables=self._actions_of(name), doing=f"shelving {name}")

    def unshelve(self, name: str, user: str, reason: str = "", *, role: str = "operator") -> dict:
        name = self._alarm_name(name)
        events = self.alarms.unshelve(name, user, self._wall())
        if not events:
            return self._answer(f"{name} is not shelved: nothing to unshelve", alarm=name, changed=False)
        self.journal.record_operator(events, reason, role)
        return self._answer(f"{name} unshelved", alarm=name)

    def set_out_of_service(self, name: str, user: str, enabled: bool, reason: str = "", *,
                           role: str = "operator") -> dict:
        alarm = self._alarm_settings(name)
        if enabled:
            require_reason(reason, f"take {name} out of service")
            if not alarm.shelvable:
                raise Refused(self._not_shelvable(name, "taken out of service"))
        events = self.alarms.set_out_of_service(name, user, self._wall(), enabled)
        if not events:
            return self._answer(f"{name} already {'out of' if enabled else 'in'} service", alarm=name,
                                changed=False)
        self.journal.record_operator(events, reason, role)
        if not enabled:
            return self._answer(f"{name} returned to service", alarm=name)
        self.reasons[f"alarm:{name}"] = reason
        return self._answer(f"{name} out of service", alarm=name, disables=self._actions_of(name),
                            doing=f"taking {name} out of service")

    def reset_action(self, name: str, user: str, reason: str, *, role: str = "operator") -> dict:
        name = self._action_name(name)
        require_reason(reason, f"reset {name}")
        events = self.actions.reset(name, user, self._wall())
        if not events:
            return self._answer(f"{name} is not latched: nothing to reset", action=name, changed=False)
        self.journal.record_actions([dataclasses.replace(e, detail=f"{e.detail}: {reason}") for e in events],
                                    reason, role)
        alarm = self.config.action(name).alarm
        return self._answer(f"{name} {events[0].detail}; it fires again on the next activation of {alarm}",
                            action=name)

    def inhibit_action(self, name: str, user: str, enabled: bool, reason: str = "", *,
                       role: str = "operator", origin: str = "") -> dict:
        """`origin`: what made the request, beside the user's reason (the device shadow's field and
        version), in the journal event."""
        name = self._action_name(name)
        if enabled:
            require_reason(reason, f"inhibit {name}")
        events = self.actions.inhibit(name, user, self._wall(), enabled)
        if not events:
            return self._answer(f"{name} {'already' if enabled else 'is not'} inhibited", action=name,
                                changed=False)
        why = (f": {reason}" if reason else "") + (f" ({origin})" if origin else "")
        self.journal.record_actions([dataclasses.replace(e, detail=e.detail + why) for e in events],
                                    reason or origin, role)
        if not enabled:
            return self._answer(f"{name} no longer inhibited", action=name)
        self.reasons[f"action:{name}"] = reason
        return self._answer(f"{name} inhibited", action=name, disables=[name], doing=f"inhibiting {name}")

    def inhibit_actions(self, changes: Mapping[str, tuple[bool, str]], user: str, *,
                        role: str = "engineer", origin: str = "") -> list[dict]:
        """Several inhibits at once ({action: (inhibited, reason)}, the device shadow's): every one is
        checked as `inhibit_action` checks it before any is applied, so a bad entry changes nothing."""
        for name, (enabled, reason) in changes.items():
            self._action_name(name)
            if enabled:
                require_reason(reason, f"inhibit {name}")
        return [self.inhibit_action(name, user, enabled, reason, role=role, origin=origin)
                for name, (enabled, reason) in changes.items()]

    def set_shadow_mode(self, on: bool, user: str, reason: str = "", *, role: str = "engineer") -> dict:
        """The global shadow mode at run time: on, every action (and a safe-state write on comm loss)
        only logs what it would write. [controller] shadow is the value at start."""
        if self.actions.shadow_global == on:
            return self._answer(f"global shadow mode already {'on' if on else 'off'}", changed=False)
        changed = self.actions.set_global_shadow(on)
        safe = self.health.set_shadow(on)
        text = (f"global shadow mode {'on: actions decide but never write' if on else 'off: actions write'}"
                + (f" (changes {', '.join(changed)})" if changed else "")
                + (f"; writing the safe state of comm-lost {', '.join(safe)}" if safe else ""))
        self.events.add("controller", "shadow_mode", text + (f": {reason}" if reason else ""), user=user,
                        role=role, reason=reason, result="on" if on else "off")
        self.journal.flush()
        return self._answer(text, disables=changed if on else [], doing="global shadow mode")

    def set_threshold_margin(self, margin: float, user: str, reason: str = "", *,
                             role: str = "engineer") -> dict:
        """Multiply the model's line threshold by `margin` (1: as fitted). Refused when the scaled
        threshold reaches 1: the line score stays below 1, so the line alarm could never fire."""
        p = self.pipeline
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not (
                math.isfinite(margin) and margin > 0):
            raise BadRequest(f"threshold margin must be a finite number above 0, got {margin!r}")
        base = p.model_threshold
        if base is not None and base * margin >= 1.0:
            raise BadRequest(f"threshold margin {margin:g} puts the line threshold at {base * margin:.4g}: "
                             "the line score stays below 1, so the line alarm could never fire; send a "
                             "smaller margin")
        if p.threshold_margin == margin:
            return self._answer(f"threshold margin already {margin:g}", changed=False)
        before = p.threshold_margin
        p.set_threshold_margin(float(margin))
        text = f"threshold margin {before:g} -> {margin:g}" + (
            f": line threshold {base * margin:.4g} (model {base:.4g})" if base is not None else "")
        self.events.add("model", "detector", text + (f": {reason}" if reason else ""), user=user, role=role,
                        reason=reason, result="threshold_margin")
        self.journal.flush()
        return self._answer(text)

    async def persist(self) -> None:
        """Write the event journal and the state file (fsync'd) now and return when they are on disk:
        the API answers an operator request only after this, so an acknowledged change and its
        record survive a kill -9 (a journal that cannot be written is logged, not refused)."""
        self.journal.flush()
        try:
            await self.keeper.save()
        except OSError as exc:
            raise NotSaved(f"the change is in effect but not saved: {exc}; it is saved again every "
                           "housekeeping round: free the disk or fix the state directory") from exc

    async def reload_model(self, user: str, path: str | None, reason: str = "", *,
                           role: str = "operator", validate: bool = True) -> dict:
        """Swap in a new model without a restart; the old one stays if the new one is refused.
        `validate`: also its units and calibration (controller.lifecycle.validate); a rollback to the
        model that ran before skips them."""
        from controller.lifecycle.validate import check_model

        target = Path(path) if path else self.models.path
        if target is None:
            raise Refused("no model configured: pass a path (CLI: --model FILE) or set [detector] model")
        new = await self.models.load(target, warm_up=True)  # ModelLoadError (422) if refused
        if validate:
            check_model(new, self.config, target)
        margin = self.pipeline.threshold_margin
        if margin != 1.0 and new.threshold * margin >= 1.0:
            raise ModelLoadError(f"model {target}: its line threshold {new.threshold:.4g} times the "
                                 f"threshold margin {margin:g} in force reaches 1, so the line alarm could "
                                 "never fire: lower the margin first")
        self.pipeline.use_detector(new)
        self.models.path = target
        self.events.add("model", "detector", f"model reloaded from {target}", user=user, role=role,
                        reason=reason)
        self.journal.flush()
        return {"ok": True, "changed": True, "model": str(target), "threshold": new.threshold}

    # ------------------------------------------------------------------ helpers
    def _wall(self) -> float:
        return self.health.clock.wall()

    def _answer(self, message: str, *, alarm: str | None = None, action: str | None = None,
                disables: list[str] | None = None, doing: str = "", changed: bool = True) -> dict:
        """The API's answer to an operator request: what happened (or why nothing did: changed
        false) and what it disables."""
        disables = disables or []
        warning = ""
        if disables:
            what = ", ".join(f"action {a} ({self._action_text(a)})" for a in disables)
            warning = f"{doing} disables {what}"
            message += f"; {warning}"
        answer: dict = {"ok": True, "changed": changed, "message": message, "disables": disables,
                        "warning": warning}
        if alarm is not None:
            answer["alarm"], answer["state"] = alarm, str(self.alarms.state(alarm))
        if action is not None:
            answer["action"] = action
        return answer

    def _alarm_settings(self, name: str):
        """The alarm's config: an [[alarms]] table or one of the controller's own alarms."""
        name = self._alarm_name(name)
        builtin = self.pipeline.builtin.get(name)
        return builtin if builtin is not None else self.config.alarm(name)

    def _action_text(self, name: str) -> str:
        a = self.config.action(name)
        return f"writes {a.write.tag}={a.write.value} when {a.alarm} is active"

    def _actions_of(self, alarm: str) -> list[str]:
        return [a.name for a in self.config.actions if a.alarm == alarm]

    def _not_shelvable(self, name: str, done: str) -> str:
        drives = ", ".join(self._actions_of(name))
        return (f"{name} cannot be {done}: shelvable = false in its [[alarms]] table"
                + (f" (it drives {drives})" if drives else ""))

    def _alarm_name(self, name: str) -> str:
        if name not in self.pipeline.alarm_names:
            raise NotFound(f"no alarm named {name!r}")
        return name

    def _action_name(self, name: str) -> str:
        if not any(a.name == name for a in self.config.actions):
            raise NotFound(f"no action named {name!r}")
        return name
