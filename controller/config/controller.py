"""``[controller]``: who this controller is (every cloud record carries it), its state directory
and its local API. The CLI's operator commands need only this section: `load_controller_section`
validates it without building the whole schema (no driver plugins, no detector spec)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from controller.config.base import Seconds, Strict, as_path, resolve_path
from controller.config.errors import ConfigError, format_errors
from controller.config.toml import read_toml


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine.

    >>> is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ControllerSection(Strict):
    """Identity of this controller (tags every cloud point carries), local state and API."""

    site: str = Field(min_length=1)
    line: str = Field(min_length=1)
    name: str = Field(default="", description="controller name; defaults to the line name")
    state_dir: Path = Field(default=Path("./state"), validate_default=True)  # relative to the TOML
    api_host: str = Field(default="127.0.0.1", min_length=1)
    api_port: int = Field(default=8470, ge=1, le=65535)
    # None: reads need no token on loopback and are forced to need one on any other bind.
    api_require_token_for_reads: bool | None = None
    # extra Host header names (DNS names); a handful in practice
    api_allowed_hosts: list[str] = Field(default_factory=list, max_length=256)
    api_max_connections: int = Field(default=128, ge=4, le=10_000)
    api_idle_timeout_s: float = Seconds(1.0, 600.0, default=15.0)  # idle or slow-header connections
    shadow: bool = False  # global shadow mode: every action only logs what it would write
    # the event journal (state_dir/journal.sqlite): events older than this or beyond this many are deleted
    events_max_age_days: float = Field(default=90.0, gt=0, le=36_500, allow_inf_nan=False)
    events_max_rows: int = Field(default=1_000_000, ge=1000, le=1_000_000_000)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir_path(cls, v: Any) -> Any:
        return as_path(v)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: Path, info: ValidationInfo) -> Path:
        return resolve_path(v, info)  # type: ignore[return-value]

    @field_validator("api_host")
    @classmethod
    def _api_host(cls, v: str) -> str:
        if any(c.isspace() for c in v) or "/" in v:
            raise ValueError(f"api_host must be a host name or an IP address, got {v!r}")
        return v

    @field_validator("api_allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9.])?|\[?[0-9A-Fa-f:.]+\]?", name):
                raise ValueError(f"expected host names without port or scheme, got {name!r}")
        return [n.lower().strip("[]") for n in v]

    @model_validator(mode="after")
    def _default_name(self) -> ControllerSection:
        if not self.name:
            object.__setattr__(self, "name", self.line)
        if self.api_require_token_for_reads is False and not is_loopback(self.api_host):
            raise ValueError(f"api_host = {self.api_host!r} is reachable from other hosts, so reads "
                             "and the event stream must need a token: remove api_require_token_for_reads"
                             " = false (it is forced on) or set api_host = '127.0.0.1'")
        return self

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.api_host)

    @property
    def reads_need_token(self) -> bool:
        """Forced on for any bind beyond loopback (0.0.0.0, a LAN address, a host name)."""
        return bool(self.api_require_token_for_reads) or not self.loopback_only


class _ControllerOnly(Strict):
    """The file seen through [controller] alone: every other table is left to `load_config`."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    controller: ControllerSection


def load_controller_section(path: str | Path) -> ControllerSection:
    """Read the file and validate its [controller] section only; `ConfigError` as `load_config`."""
    path = Path(path)
    data = read_toml(path)
    try:
        only = _ControllerOnly.model_validate(data, strict=True, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError([f"{path}: {line}" for line in format_errors(exc, _ControllerOnly)]) from None
    return only.controller
