"""Every check that needs more than one section of the line config (tags named in alarms,
actions, safe states and watchdogs; unique names; what needs a model), collected, not stopped at
the first. What a value means on a PLC (a coil given 7, a counter too wide for its register) is
the driver config's answer (`write_problem`, `counter_problem`), so no protocol is named here."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from controller.config.base import Loc, fmt_loc
from controller.config.detector import MODEL_FREE_FLAGS
from controller.config.plcs import Plc, TagRef, safe_state_alarm_name

if TYPE_CHECKING:
    from controller.config.actions import ActionConfig
    from controller.config.alarms import AlarmConfig
    from controller.config.detector import DetectorSection


class Line(Protocol):
    """What the checks read of a `LineConfig` (typed here: line.py runs them, so it is not imported back)."""

    plc_tables: tuple[str, ...]
    detector: DetectorSection
    alarms: list[AlarmConfig]
    actions: list[ActionConfig]

    def plcs(self) -> Iterator[tuple[tuple[str, int], Plc]]: ...

    def tags(self) -> dict[str, TagRef]: ...

    def detector_tags(self) -> list[str]: ...


def cross_check(cfg: Line) -> list[tuple[Loc, str]]:
    """(key path, problem) for every cross-reference problem of a structurally valid config."""
    return _CrossCheck(cfg).run()


class _CrossCheck:
    def __init__(self, cfg: Line) -> None:
        self.cfg = cfg
        self.problems: list[tuple[Loc, str]] = []
        self.tags = cfg.tags()
        self.plcs = {p.name: p for _, p in cfg.plcs()}

    def add(self, loc: Loc, msg: str) -> None:
        self.problems.append((loc, msg))

    def run(self) -> list[tuple[Loc, str]]:
        self._plcs()
        det = self._detector()
        self._alarms(det)
        self._actions()
        return self.problems

    def tag(self, loc: Loc, name: str, *, writable: bool = False, what: str = "tag") -> TagRef | None:
        ref = self.tags.get(name)
        if ref is None:
            close = difflib.get_close_matches(name, self.tags, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            tables = " or ".join(f"[[{t}.tags]]" for t in self.cfg.plc_tables)
            self.add(loc, f"unknown {what} {name!r}{hint}; expected a tag defined in {tables}")
            return None
        if writable and not ref.writable:
            self.add(loc, f"tag {name!r} is not writable; set writable = true on it in {fmt_loc(ref.loc)} "
                          "or write to another tag")
            return None
        return ref

    def _plcs(self) -> None:
        cfg = self.cfg
        plcs = list(cfg.plcs())
        if not plcs:
            tables = " or ".join(f"[[{t}]]" for t in cfg.plc_tables)
            self.add((), f"no PLC defined; add at least one {tables or 'PLC'} table (installed drivers)")
        first_plc: dict[str, Loc] = {}
        first_tag: dict[str, Loc] = {}
        for loc, plc in plcs:
            self._visible((*loc, "name"), "PLC", plc.name)
            for j, t in enumerate(plc.driver.tags):  # type: ignore[attr-defined]
                self._visible((*loc, "tags", j, "name"), "tag", t.name)
            if plc.name in first_plc:
                self.add((*loc, "name"), f"PLC name {plc.name!r} is already used by "
                         f"{fmt_loc(first_plc[plc.name])}; PLC names must be unique")
            first_plc.setdefault(plc.name, loc)
            for j, t in enumerate(plc.driver.tags):  # type: ignore[attr-defined]
                if t.name in first_tag and first_tag[t.name][:2] != loc:
                    self.add((*loc, "tags", j, "name"), f"tag {t.name!r} is already defined in "
                             f"{fmt_loc(first_tag[t.name])}; tag names must be unique across PLCs")
                first_tag.setdefault(t.name, (*loc, "tags", j))
            interval = plc.acquisition_interval_s()
            if plc.stale_timeout_s is not None and plc.stale_timeout_s <= interval:
                self.add((*loc, "stale_timeout_s"), f"{plc.stale_timeout_s} s must be longer than the "
                         f"PLC's acquisition interval ({interval:g} s), e.g. {3 * interval:g}")
            if plc.on_comm_loss == "safe_state" and not plc.safe_state:
                self.add((*loc, "safe_state"), "on_comm_loss = 'safe_state' needs safe_state = "
                         "[{tag = '<writable tag>', value = <number>}, ...]")
            if plc.on_comm_loss == "alarm" and plc.safe_state:
                self.add((*loc, "on_comm_loss"), "safe_state writes are configured but on_comm_loss is "
                         "'alarm'; set on_comm_loss = 'safe_state' or remove safe_state")
            for k, w in enumerate(plc.safe_state):
                ref = self.tag((*loc, "safe_state", k, "tag"), w.tag, writable=True)
                if ref is not None:
                    self._value_fits((*loc, "safe_state", k, "value"), ref, w.value)
            if plc.watchdog is not None:
                self._watchdog((*loc, "watchdog"), plc)

    def _visible(self, loc: Loc, what: str, name: str) -> None:
        """A name is shown in every log, status and event line: a terminal escape or a right-to-left
        override in it would rewrite what the operator reads. Letters of any script are fine."""
        hidden = sorted({f"U+{ord(c):04X}" for c in name if not c.isprintable()})
        if hidden:
            self.add(loc, f"{what} name {name!r} contains an invisible or control character "
                          f"({', '.join(hidden)}); use visible characters only")

    def _watchdog(self, loc: Loc, plc: Plc) -> None:
        wd = plc.watchdog
        ref = self.tag((*loc, "tag"), wd.tag, writable=True, what="watchdog tag")
        if ref is None:
            return
        if ref.plc != plc.name:
            self.add((*loc, "tag"), f"watchdog tag {wd.tag!r} belongs to PLC {ref.plc!r}; a heartbeat must "
                     f"be written to the PLC that watches it ({plc.name!r})")
            return
        problem = plc.driver.counter_problem(wd.tag, wd.wrap)  # type: ignore[attr-defined]
        if problem is not None:
            self.add((*loc, "tag" if ref.kind in ("bit", "text") else "wrap"), problem)

    def _value_fits(self, loc: Loc, ref: TagRef, value: bool | int | float) -> None:
        problem = self.plcs[ref.plc].driver.write_problem(ref.name, value)  # type: ignore[attr-defined]
        if problem is not None:
            self.add(loc, problem)

    def _detector(self) -> set[str]:
        d = self.cfg.detector
        det_tags = self.cfg.detector_tags()
        if d.tags is not None:
            seen: set[str] = set()
            for i, name in enumerate(d.tags):
                if name in seen:
                    self.add(("detector", "tags", i), f"tag {name!r} is listed twice")
                seen.add(name)
                ref = self.tag(("detector", "tags", i), name)
                if ref is not None and ref.kind == "text":
                    self.add(("detector", "tags", i), f"tag {name!r} carries text (for display only), never "
                             "a detector value; remove it from [detector] tags")
        det = set(det_tags)
        if d.flatline_s and d.model is not None:
            self.add(("detector", "flatline_s"), "is for the rules-only detector (no [detector] model); "
                     "with a model, flatline comes from the fit: remove [detector.flatline_s] or set "
                     "flat_factor / flat_min_seconds in [detector.spec] before `linesentry fit`")
        for section in ("units", "limits", "flatline_s"):
            for name in getattr(d, section):
                if name not in self.tags:
                    self.tag(("detector", section, name), name)
                elif name not in det:
                    self.add(("detector", section, name), f"tag {name!r} is not a detector tag; add it to "
                             "[detector] tags or remove this entry")
        return det

    def _alarms(self, det: set[str]) -> None:
        cfg = self.cfg
        reserved = {safe_state_alarm_name(name): name for name, p in self.plcs.items()
                    if p.on_comm_loss == "safe_state"}
        action_names = {a.name for a in cfg.actions}
        seen: dict[str, int] = {}
        for i, a in enumerate(cfg.alarms):
            loc: Loc = ("alarms", i)
            if a.name in seen:
                self.add((*loc, "name"), f"alarm name {a.name!r} is already used by alarms[{seen[a.name]}]; "
                         "alarm names must be unique")
            if a.name in reserved:
                self.add((*loc, "name"), f"alarm name {a.name!r} is reserved: the controller raises it when "
                         f"a safe-state write of PLC {reserved[a.name]!r} fails; rename this alarm")
            seen.setdefault(a.name, i)
            src = a.source
            if src.kind == "line" and cfg.detector.model is None:
                self.add((*loc, "source"), "source 'line' needs a fitted model: set [detector] model = "
                         "'<path to model artifact>' (without one only per-tag flags run)")
            elif src.kind == "tag":
                if self.tag((*loc, "source"), src.tag) is not None:
                    if src.tag not in det:
                        self.add((*loc, "source"), f"tag {src.tag!r} is not a detector tag, so it has no "
                                 "flags; add it to [detector] tags")
                    elif src.flag == "flatline" and cfg.detector.model is None:
                        if src.tag not in cfg.detector.flatline_s:
                            self.add((*loc, "source"), f"tag {src.tag!r} has no flatline time: without a "
                                     f"model add [detector.flatline_s] {src.tag} = <seconds>, or set "
                                     "[detector] model")
                    elif src.flag not in MODEL_FREE_FLAGS and cfg.detector.model is None:
                        self.add((*loc, "source"), f"flag {src.flag!r} needs a fitted model ([detector] "
                                 "model); without one only 'invalid', 'limit' and 'flatline' (with "
                                 "[detector.flatline_s]) run")
                    elif src.flag == "limit" and src.tag not in cfg.detector.limits:
                        self.add((*loc, "source"), f"tag {src.tag!r} has no hard limits; add "
                                 f"[detector.limits.{src.tag}] with lo and/or hi")
            elif src.kind == "threshold":
                self.tag((*loc, "source"), src.tag)
            elif src.kind == "comm" and src.plc not in self.plcs:
                self.add((*loc, "source"), f"unknown PLC {src.plc!r}; expected one of "
                         f"{', '.join(sorted(self.plcs)) or '(none defined)'}")
            elif src.kind == "action_failed" and src.action not in action_names:
                self.add((*loc, "source"), f"unknown action {src.action!r}; expected one of "
                         f"{', '.join(sorted(action_names)) or '(none defined)'}")
            if a.suppress_when is not None:
                self.tag((*loc, "suppress_when"), a.suppress_when.tag)

    def _actions(self) -> None:
        cfg = self.cfg
        alarms = {a.name: a for a in cfg.alarms}
        seen: dict[str, int] = {}
        for i, act in enumerate(cfg.actions):
            loc: Loc = ("actions", i)
            if act.name in seen:
                self.add((*loc, "name"), f"action name {act.name!r} is already used by "
                         f"actions[{seen[act.name]}]; action names must be unique")
            seen.setdefault(act.name, i)
            alarm = alarms.get(act.alarm)
            if alarm is None:
                close = difflib.get_close_matches(act.alarm, alarms, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add((*loc, "alarm"), f"unknown alarm {act.alarm!r}{hint}; expected the name of an "
                         "[[alarms]] entry")
            elif alarm.source.kind == "action_failed" and alarm.source.action == act.name:
                self.add((*loc, "alarm"), f"alarm {act.alarm!r} is raised when this action fails; an action "
                         "cannot be triggered by its own failure")
            ref = self.tag((*loc, "write", "tag"), act.write.tag, writable=True)
            if ref is not None:
                self._value_fits((*loc, "write", "value"), ref, act.write.value)
            for k, cond in enumerate(act.interlocks):
                self.tag((*loc, "interlocks", k), cond.tag)
