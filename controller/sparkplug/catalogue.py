"""The edge node's metrics: names, datatypes and aliases, all derived from the line config.

Aliases are numbered 1, 2, ... in config order (node metrics, then each PLC's in PLC order), so
the same config gives the same aliases in every session; `bdSeq` has none (it is read by name in
NBIRTH and NDEATH). Names are those of docs/sparkplug.md:

>>> c = Catalogue(alarms=["high_temp"], actions=["stop"], devices={"press": [("temp", "number")]},
...               commands=False)
>>> [(m.name, m.alias) for m in c.node][:3]
[('bdSeq', None), ('Node Control/Rebirth', 1), ('Properties/Software Version', 2)]
>>> c.device("press")[0].name, c.device("press")[0].alias
('temp', 10)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.sparkplug.payload import BOOLEAN, DOUBLE, INT64, STRING, UINT64

BDSEQ, REBIRTH = "bdSeq", "Node Control/Rebirth"
SOFTWARE_VERSION, CONFIG_HASH = "Properties/Software Version", "Properties/Config Hash"
LINE_SCORE, LINE_THRESHOLD, LINE_ALARM = "Line/Score", "Line/Threshold", "Line/Alarm"
PLC_STATE, PLC_READS, PLC_ERRORS = "PLC/State", "PLC/Reads", "PLC/Errors"
HOST = "Host"  # the metric of a command naming the host application that sent it


def alarm_metric(alarm: str, what: str) -> str:
    """`Alarms/<alarm>/<what>`: State, Priority, Ack, Shelve."""
    return f"Alarms/{alarm}/{what}"


def action_state(action: str) -> str:
    return f"Actions/{action}/State"


def tag_datatype(kind: str | None) -> int:
    """Double for numbers (and tags whose kind is known only once connected), Boolean for bits,
    String for text."""
    return BOOLEAN if kind == "bit" else STRING if kind == "text" else DOUBLE


@dataclass(frozen=True)
class MetricDef:
    name: str
    datatype: int
    alias: int | None


class Catalogue:
    """Every metric of the node and of each device (one per PLC), with its alias."""

    def __init__(self, *, alarms: Sequence[str], actions: Sequence[str],
                 devices: Mapping[str, Sequence[tuple[str, str | None]]], commands: bool) -> None:
        names: list[tuple[str, int]] = [(REBIRTH, BOOLEAN), (SOFTWARE_VERSION, STRING), (CONFIG_HASH, STRING),
                                        (LINE_SCORE, DOUBLE), (LINE_THRESHOLD, DOUBLE), (LINE_ALARM, BOOLEAN)]
        for alarm in alarms:
            names += [(alarm_metric(alarm, "State"), STRING), (alarm_metric(alarm, "Priority"), STRING)]
            if commands:
                names += [(alarm_metric(alarm, "Ack"), STRING), (alarm_metric(alarm, "Shelve"), STRING)]
        names += [(action_state(a), STRING) for a in actions]
        alias = iter(range(1, 1 << 62))
        self.node = [MetricDef(BDSEQ, INT64, None), *(MetricDef(n, t, next(alias)) for n, t in names)]
        self._devices = {
            device: [*(MetricDef(tag, tag_datatype(kind), next(alias)) for tag, kind in tags),
                     MetricDef(PLC_STATE, STRING, next(alias)), MetricDef(PLC_READS, UINT64, next(alias)),
                     MetricDef(PLC_ERRORS, UINT64, next(alias))]
            for device, tags in devices.items()}
        self._node_by_name = {m.name: m for m in self.node}
        self._by_name = {(device, m.name): m for device, ms in self._devices.items() for m in ms}
        self.by_alias: dict[int, tuple[str | None, MetricDef]] = {
            m.alias: (None, m) for m in self.node if m.alias is not None}
        self.by_alias.update({m.alias: (d, m) for d, ms in self._devices.items() for m in ms
                              if m.alias is not None})

    @property
    def devices(self) -> list[str]:
        return list(self._devices)

    def device(self, name: str) -> list[MetricDef]:
        return self._devices[name]

    def node_metric(self, name: str) -> MetricDef:
        return self._node_by_name[name]

    def device_metric(self, device: str, name: str) -> MetricDef:
        return self._by_name[(device, name)]

    def find_node(self, name: str | None, alias: int | None) -> MetricDef | None:
        """A node metric by name, or by alias (a host may send either in an NCMD)."""
        if name is not None:
            return self._node_by_name.get(name)
        found = self.by_alias.get(alias) if alias is not None else None
        return found[1] if found is not None and found[0] is None else None
