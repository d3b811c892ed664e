"""The reported `state` of the shadow, derived from `Operations.status()`: only facts that change
rarely (no score, no counters, no ages), so the reported document changes when the line's state
does, not on every step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.lifecycle.manager import ModelLifecycle
    from controller.operations import Operations


def reported_state(ops: Operations, lifecycle: ModelLifecycle | None = None) -> dict[str, Any]:
    """Config, software, model (with the lifecycle's previous model, challenger and watch: their
    figures refreshed at most every [models] report_s), shadow mode, margin, inhibits, latches, alarms
    and PLC health."""
    st = ops.status()
    c, d = st["controller"], st["detector"]
    model = d["model"]
    return {
        "config": {"hash": c["config_hash"], "site": c["site"], "line": c["line"], "name": c["name"]},
        "software_version": c["version"],
        "model": {"version": Path(model).stem if model else None, "id": d["model_id"],
                  "threshold": d["threshold"], "model_threshold": d["model_threshold"],
                  **(lifecycle.report() if lifecycle is not None else {})},
        "shadow_mode": c["shadow"],
        "threshold_margin": d["threshold_margin"],
        "inhibits": {a["name"]: {"inhibited": a["inhibited"], "by": a["inhibited_by"], "reason":
                                 ops.reasons.get(f"action:{a['name']}", "") if a["inhibited"] else ""}
                     for a in st["actions"]},
        "latched": [a["name"] for a in st["actions"] if a["latched"]],
        "failed": [a["name"] for a in st["actions"] if a["failed"]],
        "alarms": {"first_out": st["alarms"]["first_out"], "active": st["alarms"]["active"],
                   "states": {a["name"]: a["state"] for a in ops.alarms.status() if a["state"] != "NORMAL"}},
        "plcs": {p["name"]: {"state": p["state"], "comm_lost": p["comm_lost"]} for p in st["plcs"]},
    }
