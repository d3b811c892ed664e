"""Loading a line config: `load_config` reads the file and validates the whole line, every problem
one line (``<file>: <key path>: <what is wrong and what is expected>``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from controller.config.base import fmt_loc
from controller.config.errors import ConfigError, format_errors
from controller.config.line import LineConfig, line_model
from controller.config.plcs import FROM_FILE
from controller.config.secrets import secret_problems
from controller.config.toml import read_toml


def load_config(path: str | Path) -> LineConfig:
    """Read and validate one line config; `ConfigError` lists every problem, one line each.

    Structural errors (types, unknown keys, ranges) are reported first; cross-references (tags,
    alarms, actions, PLCs named elsewhere) once the structure is valid. Relative paths are
    relative to the directory of the TOML file.
    """
    path = Path(path)
    data = read_toml(path)
    problems = [f"{path}: {fmt_loc(loc)}: {msg}" for loc, msg in secret_problems(data)]
    schema = line_model()
    try:
        # strict: no "8470" -> 8470 or "yes" -> true coercion anywhere, driver tables included
        cfg = schema.model_validate(data, strict=True, context={"base_dir": path.resolve().parent,
                                                                FROM_FILE: True})
    except ValidationError as exc:
        problems += [f"{path}: {line}" for line in format_errors(exc, schema)]
        cfg = None
    if problems:
        raise ConfigError(problems)
    return cfg
