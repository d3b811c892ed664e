"""Secrets never live in the config file: literal ``password``/``token``/``secret`` keys are
refused at load, and `secret_values` finds what the ``*_env`` keys point at, for the log scrubber."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from controller.config.base import ENV_NAME, Loc

if TYPE_CHECKING:
    from controller.config.line import LineConfig

SECRET_KEYS = {"password": "password_env", "token": "token_env", "secret": "secret_env"}


def secret_problems(data: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Literal secrets are refused (and removed so they are not reported twice as unknown keys)."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield from secret_problems(item, (*loc, i))
    elif isinstance(data, dict):
        for key in list(data):
            value = data[key]
            if key.lower() in SECRET_KEYS:
                alt = SECRET_KEYS[key.lower()]
                del data[key]
                yield (*loc, key), (f"secrets must not be written in the config file; set {alt} = "
                                    "'<NAME_OF_ENVIRONMENT_VARIABLE>' and export the secret in that variable")
            elif key.endswith("_env") and isinstance(value, str) and not ENV_NAME.match(value):
                del data[key]
                yield (*loc, key), ("expected the NAME of an environment variable (letters, digits, _), "
                                    "not the secret itself")
            else:
                yield from secret_problems(value, (*loc, key))


def secret_values(cfg: LineConfig) -> list[str]:
    """The values of every secret the config names (`*_env` keys: passwords, the sync token), for
    the log scrubber. A secret the sink needs must be set when sync is on: SyncConfigError otherwise."""
    if cfg.sync is not None and cfg.sync.enabled:
        cfg.sync.check_environment()
    out: list[str] = []
    stack: list[Any] = [cfg]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, BaseModel):
            for key, value in item:
                if key.endswith("_env") and isinstance(value, str) and os.environ.get(value):
                    out.append(os.environ[value])
                elif isinstance(value, BaseModel | list):
                    stack.append(value)
    return out
