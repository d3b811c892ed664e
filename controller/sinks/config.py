"""The ``[sync]`` section: the shared worker's keys plus the chosen sink's own keys, in one flat table.

``sink`` names the sink (default ``"influxdb"``, so every existing ``[sync]`` section keeps its
meaning); the worker keys below are the same for every sink; every other key belongs to the
sink and is validated by its plugin's `config` model (`options`). Importing this module imports
no client library (influxdb_client, an MQTT client): the config schema can use it cheaply.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from controller.errors import LinesentryError
from controller.sinks import plugin


class SyncConfigError(LinesentryError, ValueError):
    """A user mistake in the sync configuration found at start (one line, names the key and the fix),
    e.g. the token's environment variable is not set."""

    status = 400


class SyncConfig(BaseModel):
    """`[sync]` section of the controller config. Secrets never appear here, only env var names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sink: str = Field("influxdb", description="which sink sends the outbox (a registered sink plugin)")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="max records per send")
    timeout_s: float = Field(10.0, ge=0.1, le=600, allow_inf_nan=False, description="per send")
    backoff_initial_s: float = Field(1.0, ge=0.01, le=3600, allow_inf_nan=False)
    backoff_cap_s: float = Field(300.0, ge=0.01, le=86_400, allow_inf_nan=False)
    # 20 GiB: a week-long outage at 1,000 tags and 10 s windows (~17 GB); lower it on small disks.
    max_outbox_bytes: int = Field(20 << 30, ge=1 << 16, le=1 << 44,
                                  description="outbox cap (stored record bytes)")
    enabled: bool = True
    # SerializeAsAny: a dump holds the sink's keys, not those of the bare BaseModel annotation (none)
    options: SerializeAsAny[BaseModel] = Field(description="the sink's own keys, validated by its plugin")

    @model_validator(mode="before")
    @classmethod
    def _sink_keys(cls, data: Any) -> Any:
        """Split the flat table: the worker's keys stay, the rest go to the sink's config model."""
        if not isinstance(data, dict):
            return data
        sink = plugin(str(data.get("sink", "influxdb")))
        own = {k: v for k, v in data.items() if k not in cls.model_fields}
        given = data.get("options")
        if isinstance(given, sink.config) and not own:  # built in code, or a copy of a SyncConfig
            return data
        if given is not None:  # a dump of a SyncConfig; never a second way past the sink's model
            if own or not isinstance(given, dict):
                raise ValueError(f"sync.options: not a key; write the {sink.name} sink's keys directly "
                                 f"in [sync] (e.g. url = \"...\")")
            own = given
        try:
            options = sink.config.model_validate(own)
        except ValidationError as exc:  # one line per problem, named by its key in [sync]
            keys = sorted({*cls.model_fields, *sink.config.model_fields} - {"options"})
            raise ValueError("; ".join(_problem(e, keys) for e in exc.errors())) from None
        return {k: v for k, v in data.items() if k in cls.model_fields} | {"options": options}

    @model_validator(mode="after")
    def _backoff(self) -> SyncConfig:
        if self.backoff_cap_s < self.backoff_initial_s:
            raise ValueError(f"sync.backoff_cap_s ({self.backoff_cap_s}) must be >= "
                             f"sync.backoff_initial_s ({self.backoff_initial_s})")
        return self

    def check_environment(self) -> None:
        """SyncConfigError if a secret the sink needs is missing from the environment (a sink config
        model that reads secrets defines `check_environment()`)."""
        check = getattr(self.options, "check_environment", None)
        if check is not None:
            check()


def _problem(error: Any, keys: list[str]) -> str:
    """One pydantic error of the sink's model as ``sync.<key>: <what is wrong and the TOML fix>``."""
    key = "sync." + ".".join(map(str, error["loc"]))
    name = str(error["loc"][-1]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; expected one of: {', '.join(keys)}"
    if error["type"] == "missing":
        return f'{key}: missing; add {name} = "..." to [sync]'
    if error["type"] == "string_type":
        return f'{key}: expected a string, got {error["input"]!r}; write it in quotes: {name} = "..."'
    message = error["msg"].removeprefix("Value error, ")
    return message if message.startswith(key) else f"{key}: {message}"
