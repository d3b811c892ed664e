"""``[mqtt]`` and ``[mqtt.sparkplug]``: the broker connection and the Sparkplug B edge node
(docs/sparkplug.md). ``[mqtt.shadow]`` is the device shadow's (controller.config.shadow).

No MQTT or protobuf library is imported here: the schema stays light (import-linter "light schema").
Secrets are only environment variable names (`username_env`, `password_env`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from controller.config.base import Loc, Seconds, Strict, as_path, resolve_path
from controller.config.shadow import ShadowConfig

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
Deadband = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


def check_sparkplug_id(v: str) -> str:
    """A Sparkplug group, edge node or host id is one topic level: no '/', '+', '#' (spec 3.0)."""
    if any(c in v for c in "/+#\0") or v != v.strip():
        raise ValueError(f"a Sparkplug id is one MQTT topic level: no '/', '+', '#' or surrounding blanks, "
                         f"got {v!r}")
    return v


def sparkplug_problems(mqtt: MqttConfig | None, site: str, line: str,
                       plcs: Iterable[tuple[Loc, str]]) -> list[tuple[Loc, str]]:
    """(key path, problem) for the ids the Sparkplug node takes from elsewhere in the config: the
    site and line (when group_id/edge_node_id are not set) and every PLC's name (its device id),
    each one topic level. Caught at load instead of a ValueError at start, or a PLC named
    "press/1" publishing under a device id no host can parse (or "press+", that no broker takes)."""
    sp = mqtt.sparkplug if mqtt is not None else None
    if sp is None:
        return []
    problems: list[tuple[Loc, str]] = []
    for key, own, value, loc in (("group_id", sp.group_id, site, ("controller", "site")),
                                 ("edge_node_id", sp.edge_node_id, line, ("controller", "line"))):
        if not own and _bad_id(value):
            problems.append((loc, f"{value!r} is the Sparkplug {key} (one MQTT topic level: no '/', '+', "
                                  f"'#'); set [mqtt.sparkplug] {key} to one"))
    for loc, name in plcs:
        if _bad_id(name):
            problems.append(((*loc, "name"), f"{name!r} is a Sparkplug device id (one MQTT topic level: no "
                                             "'/', '+', '#' or surrounding blanks); rename the PLC"))
    return problems


def _bad_id(value: str) -> bool:
    try:
        check_sparkplug_id(value)
    except ValueError:
        return True
    return False


class SparkplugConfig(Strict):
    """The Sparkplug B edge node of this line (group = site, edge node = line, one device per PLC)."""

    group_id: str = ""  # default: controller.site
    edge_node_id: str = ""  # default: controller.line
    tag_interval_s: float = Seconds(0.01, 3600.0, default=1.0)
    deadband: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    deadbands: dict[str, Deadband] = Field(default_factory=dict)  # tag -> absolute deadband
    data_qos: Literal[0, 1] = 1  # 0: Sparkplug-strict, loses what was in flight at a broker loss
    replay_per_s: int = Field(default=500, ge=1, le=100_000)
    commands: bool = False  # NCMD beyond Node Control/Rebirth: ack and shelve only
    command_hosts: list[str] = Field(default_factory=list, max_length=64)
    primary_host_id: str = ""

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _ids(cls, v: str) -> str:
        return check_sparkplug_id(v)

    @field_validator("command_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if not host:
                raise ValueError("command_hosts entries must not be empty")
            check_sparkplug_id(host)
        return v

    @model_validator(mode="after")
    def _commands_need_hosts(self) -> SparkplugConfig:
        if self.commands and not self.command_hosts:
            raise ValueError("commands = true needs command_hosts = [\"<host application id>\", ...]: "
                             "the hosts allowed to ack and shelve")
        return self

    def ids_for(self, site: str, line: str) -> tuple[str, str]:
        """(group id, edge node id) in use: the configured ones or the site and line."""
        return check_sparkplug_id(self.group_id or site), check_sparkplug_id(self.edge_node_id or line)


class MqttConfig(Strict):
    """The MQTT broker connection; absent: no MQTT at all."""

    broker: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""  # default "linesentry-<site>-<line>"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    username_env: str = "LINESENTRY_MQTT_USERNAME"  # absent variable: no authentication
    password_env: str = "LINESENTRY_MQTT_PASSWORD"
    ca_file: Path | None = None  # TLS: the CA that signed the broker's certificate (mqtts://)
    cert_file: Path | None = None  # optional client certificate and its key
    key_file: Path | None = None
    keepalive_s: float = Seconds(1.0, 3600.0, default=10.0)
    connect_timeout_s: float = Seconds(0.1, 600.0, default=5.0)
    backoff_initial_s: float = Seconds(0.01, 3600.0, default=0.5)
    backoff_cap_s: float = Seconds(0.01, 86_400.0, default=10.0)
    sparkplug: SparkplugConfig | None = None
    shadow: ShadowConfig | None = None

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or port == -1
                or parts.path not in ("", "/")):
            raise ValueError(f"broker must be mqtt://HOST:PORT or mqtts://HOST:PORT (TLS), got {v!r}")
        return v

    @field_validator("ca_file", "cert_file", "key_file", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return None if v == "" else as_path(v)

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _resolve(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(v, info)

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.backoff_cap_s < self.backoff_initial_s:
            raise ValueError(f"backoff_cap_s ({self.backoff_cap_s}) must be >= backoff_initial_s "
                             f"({self.backoff_initial_s})")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both (a client certificate) or neither")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file are for TLS: write the broker as mqtts://HOST:PORT")
        return self

    # -- derived -------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return urlsplit(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.broker)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    def client_id_for(self, site: str, line: str) -> str:
        return self.client_id or f"linesentry-{site}-{line}"

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) from the environment; an unset username variable means no auth."""
        user = os.environ.get(self.username_env)
        return (user, os.environ.get(self.password_env)) if user else (None, None)
