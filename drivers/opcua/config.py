"""OPC UA driver configuration: pydantic models whose errors name the key and the fix.

Durations are seconds (`*_s`) like everywhere in linesentry, except the subscription
parameters the OPC UA specification itself defines in milliseconds (`sampling_interval_ms`,
`publishing_interval_ms`), which keep the spec's unit and name. The client-side polling period is
`poll_interval_s`; the older spelling `poll_interval_ms` is still accepted.
"""

import math
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from drivers.opcua.noderef import parse_browse_path, parse_node_ref

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def normalize_sha256(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits, from "AA:BB:..." (openssl) or plain hex."""
    digits = text.strip().lower().replace(":", "")
    if not _HEX64.match(digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint: expected 32 bytes as hex, e.g. "
                         "\"AB:CD:...\" as `openssl x509 -fingerprint -sha256` or "
                         "`linesentry certs fetch` print it")
    return digits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpcUaTag(_Strict):
    """One variable: addressed by a namespace-URI node id or by a browse path, never by a bare index."""

    name: str = Field(min_length=1)
    node: str | None = None  # "nsu=urn:linesentry:plant;s=Conveyor.MotorCurrent", "i=2258", ...
    browse_path: list[str] | None = None  # ["0:Objects", "urn:linesentry:plant:Plant", ...] from Root
    group: str = "default"
    writable: bool = False
    deadband_abs: float | None = Field(default=None, ge=0, le=1e300)  # overrides the group's deadband
    deadband_pct: float | None = Field(default=None, ge=0, le=100)
    index: int | None = Field(default=None, ge=0)  # element of an array node (0-based)

    @model_validator(mode="after")
    def _check(self) -> "OpcUaTag":
        where = f"tags[{self.name!r}]"
        if (self.node is None) == (self.browse_path is None):
            raise ValueError(f"{where}: set exactly one of 'node' (e.g. \"nsu=urn:plant;s=Motor.Current\") "
                             "or 'browse_path' (e.g. [\"0:Objects\", \"urn:plant:Motor\"])")
        if self.node is not None:
            try:
                parse_node_ref(self.node)
            except ValueError as exc:
                raise ValueError(f"{where}.node: {exc}") from None
        if self.browse_path is not None:
            try:
                parse_browse_path(self.browse_path)
            except ValueError as exc:
                raise ValueError(f"{where}.browse_path: {exc}") from None
        if self.deadband_abs is not None and self.deadband_pct is not None:
            raise ValueError(f"{where}: set only one of deadband_abs / deadband_pct")
        if self.index is not None and self.writable:
            raise ValueError(f"{where}: writes to an array element are not supported; "
                             "remove writable or index")
        return self


class OpcUaGroup(_Strict):
    """Tags sharing one acquisition mode: a server-side subscription or client-side polling."""

    name: str = Field(min_length=1)
    mode: Literal["subscription", "polling"] = "subscription"
    sampling_interval_ms: float = Field(default=100.0, ge=0, le=3_600_000)
    publishing_interval_ms: float = Field(default=100.0, ge=1, le=3_600_000)
    queue_size: int = Field(default=1, ge=0, le=10_000)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    deadband_value: float = Field(default=0.0, ge=0, le=1e300)
    poll_interval_s: float = Field(default=1.0, ge=0.001, le=3600, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _poll_interval_ms(cls, data: Any) -> Any:
        """The older key `poll_interval_ms` = milliseconds, taken as poll_interval_s = ms / 1000."""
        if not isinstance(data, dict) or "poll_interval_ms" not in data:
            return data
        data = dict(data)
        ms = data.pop("poll_interval_ms")
        if "poll_interval_s" in data:
            raise ValueError("set poll_interval_s (seconds) or the older poll_interval_ms, not both")
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not (
                math.isfinite(ms) and 1 <= ms <= 3_600_000):
            raise ValueError(f"poll_interval_ms: {ms!r} is out of range; expected 1 <= value <= 3600000 "
                             "(or poll_interval_s in seconds, 0.001 .. 3600)")
        data["poll_interval_s"] = ms / 1000
        return data

    @model_validator(mode="after")
    def _check(self) -> "OpcUaGroup":
        where = f"groups[{self.name!r}]"
        if self.deadband_type == "percent" and self.deadband_value > 100:
            raise ValueError(f"{where}.deadband_value: a percent deadband must be 0..100, "
                             f"got {self.deadband_value}")
        if self.mode == "polling" and self.deadband_type != "none":
            raise ValueError(f"{where}: deadbands apply to subscription groups only; "
                             "set mode: subscription or deadband_type: none")
        return self


class OpcUaSecurity(_Strict):
    """Message security, server trust and user identity. Passwords come from the environment only."""

    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    # Paths: relative ones are relative to the config file (validation context "base_dir").
    client_certificate: Path | None = None  # DER or PEM; its URI SAN becomes the client's application URI
    client_private_key: Path | None = None
    server_certificate: Path | None = None  # the trusted server certificate (DER or PEM)
    server_certificate_sha256: str | None = None  # or its pinned fingerprint ("AB:CD:..." or hex)
    trust_server_certificate: bool = False  # accept an unknown server certificate (commissioning only)
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password
    allow_plaintext_password: bool = False  # send a password over policy None (readable on the wire)
    allow_insecure_key_permissions: bool = False  # accept a private key readable by group/others

    @field_validator("client_certificate", "client_private_key", "server_certificate", mode="before")
    @classmethod
    def _relative_to_config(cls, v: Any, info: ValidationInfo) -> Any:
        """TOML has only strings; a relative path means relative to the TOML file, not to the cwd."""
        if isinstance(v, str):
            v = Path(v)
        base = (info.context or {}).get("base_dir")
        if isinstance(v, Path) and base is not None and not v.is_absolute():
            v = Path(os.path.normpath(Path(base) / v))
        return v

    @model_validator(mode="after")
    def _check(self) -> "OpcUaSecurity":
        if self.server_certificate_sha256 is not None:
            try:
                object.__setattr__(self, "server_certificate_sha256",
                                   normalize_sha256(self.server_certificate_sha256))
            except ValueError as exc:
                raise ValueError(f"security.server_certificate_sha256: {exc}") from None
            if self.server_certificate is not None:
                raise ValueError("set only one of security.server_certificate / "
                                 "security.server_certificate_sha256")
        if self.policy == "None" and self.mode != "None":
            raise ValueError(f"security.mode {self.mode!r} needs a signing policy: set security.policy: "
                             "Basic256Sha256 (policy None cannot sign or encrypt) or security.mode: None")
        if self.policy != "None" and self.mode == "None":
            raise ValueError(f"security.policy {self.policy!r} needs security.mode Sign or SignAndEncrypt")
        if self.policy != "None":
            missing = [k for k in ("client_certificate", "client_private_key") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"security.mode {self.mode!r} needs " + " and ".join(
                    f"security.{k}" for k in missing) + " (create them with `linesentry certs`)")
        if self.password_env is not None:
            if not _ENV_NAME.match(self.password_env):
                raise ValueError(f"security.password_env must be an environment variable NAME, got "
                                 f"{self.password_env!r}; never put the password itself in the config")
            if self.username is None:
                raise ValueError("security.password_env is set but security.username is not")
            if self.policy == "None" and not self.allow_plaintext_password:
                raise ValueError("a password over security.policy None is sent readable on the "
                                 "network: use policy Basic256Sha256 (mode SignAndEncrypt), or set "
                                 "security.allow_plaintext_password = true to accept that")
        return self

    @property
    def is_secure(self) -> bool:
        return self.policy != "None"


def _default_groups() -> list[OpcUaGroup]:
    return [OpcUaGroup(name="default")]


class OpcUaConfig(_Strict):
    """One OPC UA server (PLC) connection and its tags, in a fixed order (the ReadingBatch index)."""

    name: str = Field(min_length=1)
    endpoint: str
    # per request; a silent link is given up after this (answers slower than ~3/4 of it count as a
    # dead link: docs/drivers.md)
    timeout_s: float = Field(default=5.0, ge=0.01, le=600, allow_inf_nan=False)
    session_timeout_s: float = Field(default=60.0, ge=1, le=86_400, allow_inf_nan=False)
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    groups: list[OpcUaGroup] = Field(default_factory=_default_groups)
    tags: list[OpcUaTag] = Field(min_length=1)
    readback: bool = True
    max_nodes_per_request: int | None = Field(default=None, ge=1)  # cap below the server's OperationLimits

    @model_validator(mode="after")
    def _check(self) -> "OpcUaConfig":
        url = urlparse(self.endpoint)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError(f"endpoint {self.endpoint!r} must look like opc.tcp://host:4840[/path]")
        try:
            url.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError(f"endpoint {self.endpoint!r} has an invalid port") from None
        for kind, names in (("tags", [t.name for t in self.tags]), ("groups", [g.name for g in self.groups])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name(s) {', '.join(dupes)}; names must be unique")
        known = {g.name for g in self.groups}
        for t in self.tags:
            if t.group not in known:
                raise ValueError(f"tags[{t.name!r}].group {t.group!r} is not defined in groups "
                                 f"(defined: {', '.join(sorted(known))})")
        modes = {g.name: g.mode for g in self.groups}
        for t in self.tags:
            if (t.deadband_abs is not None or t.deadband_pct is not None) and modes[t.group] == "polling":
                raise ValueError(f"tags[{t.name!r}]: deadbands apply to subscription groups only, "
                                 f"but group {t.group!r} is polling")
        return self

    def group(self, name: str) -> OpcUaGroup:
        return next(g for g in self.groups if g.name == name)

    def acquisition_interval_s(self) -> float:
        """The slowest group's publishing (subscription) or polling interval."""
        return max(g.publishing_interval_ms / 1000 if g.mode == "subscription" else g.poll_interval_s
                   for g in self.groups)

    def write_problem(self, tag: str, value: bool | int | float) -> str | None:
        """None: a node's data type is known only once connected (the driver checks it then)."""
        return None

    def counter_problem(self, tag: str, wrap: int) -> str | None:
        """None: a node's data type is known only once connected (the driver checks it then)."""
        return None

    def value_kind(self, tag: str) -> None:
        """None: number or text is known only once connected (the node's DataType)."""
        return None
