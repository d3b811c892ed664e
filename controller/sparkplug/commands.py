"""Which NCMD/DCMD metrics the edge node obeys: an allow-list, never a write to a PLC.

- `Node Control/Rebirth` = true: always (a host asks for the births again).
- With ``commands = true`` only: `Alarms/<name>/Ack` (String: the reason) and
  `Alarms/<name>/Shelve` (String: "<seconds> <reason>"), each in an NCMD that also carries a
  `Host` metric (String) naming a host application listed in ``command_hosts``.
- Everything else (a tag name, a DCMD, an unknown host, a malformed value) is refused with why.

The broker's ACL is the real authorisation (who may publish NCMD at all, docs/sparkplug.md);
`Host` is the second check, and names the user of the journal event ("sparkplug:<host>").

>>> from controller.sparkplug.catalogue import Catalogue
>>> from controller.sparkplug.payload import Metric, Payload, STRING
>>> c = Catalogue(alarms=["hot"], actions=[], devices={}, commands=True)
>>> shelve = Metric("Alarms/hot/Shelve", STRING, "600 maintenance")
>>> ncmd = Payload(0, 0, (shelve, Metric("Host", STRING, "scada")))
>>> node_commands(ncmd, c, enabled=True, hosts=["scada"])
([Command(kind='shelve', alarm='hot', host='scada', reason='maintenance', seconds=600.0)], [])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from controller.sparkplug.catalogue import HOST, REBIRTH, Catalogue
from controller.sparkplug.payload import BOOLEAN, STRING, Payload

ALARMS = "Alarms/"
VERBS = {"/Ack": "ack", "/Shelve": "shelve"}
MAX_REASON = 500  # as the API's: an operator's reason, kept in the journal with the change
ECHO = 80  # characters of a refused name or value repeated in the refusal (the log, the journal)
REFUSALS_PER_MINUTE = 20  # journaled and logged; beyond, counted and summed up in the next one


@dataclass(frozen=True)
class Command:
    kind: Literal["rebirth", "ack", "shelve"]
    alarm: str = ""
    host: str = ""
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Refusal:
    metric: str  # its name, or "alias <n>"
    why: str


def node_commands(payload: Payload, catalogue: Catalogue, *, enabled: bool,
                  hosts: Sequence[str]) -> tuple[list[Command], list[Refusal]]:
    """The commands of one NCMD to run, in order, and the metrics refused."""
    host = next((m.value for m in payload.metrics if m.name == HOST and m.datatype == STRING), None)
    out: list[Command] = []
    refused: list[Refusal] = []
    for m in payload.metrics:
        known = catalogue.find_node(m.name, m.alias)
        name = known.name if known is not None else m.name
        label = clip(name) if name is not None else f"alias {m.alias}"
        if name == HOST:
            continue
        if name == REBIRTH:
            if m.value is True:
                out.append(Command("rebirth"))
            elif m.datatype != BOOLEAN or m.value is not False:
                refused.append(Refusal(label, "Node Control/Rebirth takes a Boolean true"))
            continue
        verb = _verb(name)
        if verb is None:
            refused.append(Refusal(label, "not a command this edge node accepts (no tag is ever written "
                                          "from MQTT)"))
            continue
        alarm, kind = verb
        if not enabled:
            refused.append(Refusal(label, "commands are off ([mqtt.sparkplug] commands = false)"))
        elif known is None:
            refused.append(Refusal(label, f"no alarm named {clip(alarm)!r}"))
        elif not isinstance(host, str) or host not in hosts:
            refused.append(Refusal(label, f"host {clip(host)!r} is not in command_hosts (send a Host metric)"
                                   if host is not None else "no Host metric (String) in the NCMD"))
        elif not isinstance(m.value, str):
            refused.append(Refusal(label, "expects a String value"))
        elif kind == "ack":
            _add(out, refused, label, Command("ack", alarm, host, m.value.strip()))
        else:
            seconds, _, reason = m.value.strip().partition(" ")
            try:
                duration = float(seconds)
            except ValueError:
                duration = math.nan
            if not (math.isfinite(duration) and duration > 0):
                refused.append(Refusal(label, f"expects \"<seconds> <reason>\", got {clip(m.value)!r}"))
            else:
                _add(out, refused, label, Command("shelve", alarm, host, reason.strip(), duration))
    return out, refused


def device_commands(payload: Payload, device: str) -> list[Refusal]:
    """A DCMD is never obeyed: every metric in it is refused (tags are not written from MQTT)."""
    return [Refusal(f"{clip(device)}/{clip(m.name) if m.name is not None else f'alias {m.alias}'}",
                    "device commands are refused: no tag is ever written from MQTT") for m in payload.metrics]


def _add(out: list[Command], refused: list[Refusal], label: str, command: Command) -> None:
    """`command`, if its reason is one the API would take too: printable, at most MAX_REASON."""
    if len(command.reason) > MAX_REASON or not command.reason.isprintable():
        refused.append(Refusal(label, f"the reason must be printable text of at most {MAX_REASON} "
                                      "characters (no line breaks or control characters)"))
    else:
        out.append(command)


def clip(text: str) -> str:
    """At most ECHO characters of a name or value a host sent, to repeat it in a refusal: a 1 MB
    metric name or value must not become a 1 MB log line and journal event."""
    return text if len(text) <= ECHO else f"{text[:ECHO]}... ({len(text)} characters)"


class RefusalGate:
    """At most REFUSALS_PER_MINUTE refusals are said (logged, journaled) a minute; the others are
    only counted, and the next one said tells how many were not. A host (or anyone the broker lets
    publish NCMD) sending thousands of bad commands a second must not flood the log and the journal,
    nor wake the node for each one."""

    def __init__(self, per_minute: int = REFUSALS_PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._window = -math.inf
        self._said = 0
        self.unsaid = 0  # refused, not said since the last one said

    def allow(self, now: float) -> bool:
        """True if a refusal at `now` (monotonic seconds) is to be said; else it is counted."""
        if now - self._window >= 60.0:
            self._window, self._said = now, 0
        if self._said < self.per_minute:
            self._said += 1
            return True
        self.unsaid += 1
        return False

    def take_unsaid(self) -> int:
        n, self.unsaid = self.unsaid, 0
        return n


def _verb(name: str | None) -> tuple[str, str] | None:
    """(alarm, "ack" | "shelve") for `Alarms/<alarm>/Ack|Shelve`, else None."""
    if name is None or not name.startswith(ALARMS):
        return None
    for suffix, kind in VERBS.items():
        if name.endswith(suffix) and len(name) > len(ALARMS) + len(suffix):
            return name[len(ALARMS):-len(suffix)], kind
    return None
