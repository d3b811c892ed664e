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
        label = name if name is not None else f"alias {m.alias}"
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
            refused.append(Refusal(label, f"no alarm named {alarm!r}"))
        elif not isinstance(host, str) or host not in hosts:
            refused.append(Refusal(label, f"host {host!r} is not in command_hosts (send a Host metric)"
                                   if host is not None else "no Host metric (String) in the NCMD"))
        elif not isinstance(m.value, str):
            refused.append(Refusal(label, "expects a String value"))
        elif kind == "ack":
            out.append(Command("ack", alarm, host, m.value.strip()))
        else:
            seconds, _, reason = m.value.strip().partition(" ")
            try:
                duration = float(seconds)
            except ValueError:
                duration = math.nan
            if not (math.isfinite(duration) and duration > 0):
                refused.append(Refusal(label, f"expects \"<seconds> <reason>\", got {m.value!r}"))
            else:
                out.append(Command("shelve", alarm, host, reason.strip(), duration))
    return out, refused


def device_commands(payload: Payload, device: str) -> list[Refusal]:
    """A DCMD is never obeyed: every metric in it is refused (tags are not written from MQTT)."""
    return [Refusal(f"{device}/{m.name if m.name is not None else f'alias {m.alias}'}",
                    "device commands are refused: no tag is ever written from MQTT") for m in payload.metrics]


def _verb(name: str | None) -> tuple[str, str] | None:
    """(alarm, "ack" | "shelve") for `Alarms/<alarm>/Ack|Shelve`, else None."""
    if name is None or not name.startswith(ALARMS):
        return None
    for suffix, kind in VERBS.items():
        if name.endswith(suffix) and len(name) > len(ALARMS) + len(suffix):
            return name[len(ALARMS):-len(suffix)], kind
    return None
