"""`ConfigError` and the one-line-per-problem messages: ``<key path>: <what is wrong and what is
expected>``, with the exact key path the user wrote (``opcua[0].tags[1].node``)."""

from __future__ import annotations

import difflib
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from controller.config.base import Loc, fmt_loc, printable
from controller.errors import LinesentryError


class ConfigError(LinesentryError, ValueError):
    """A user mistake in a line config; `problems` holds one line per problem."""

    status = 400

    def __init__(self, problems: list[str]) -> None:
        problems = [printable(p) for p in problems]  # a name's escape codes must not reach a terminal
        super().__init__("\n".join(problems))
        self.problems = problems


def format_errors(exc: ValidationError, schema: type[BaseModel]) -> list[str]:
    """One `<key path>: <problem>` line per pydantic error of `schema` (cross-reference lists expanded)."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"], schema)
        ctx = err.get("ctx") or {}
        if err["type"] in ("line_config", "detector_spec"):
            for sub, msg in ctx["problems"]:
                sub_loc = (sub,) if isinstance(sub, str) else tuple(sub)
                where = fmt_loc((*loc, *sub_loc) if sub_loc != ("",) else loc)
                lines.append(f"{where or '(top level)'}: {msg}")
            continue
        lines.append(f"{fmt_loc(loc) or '(top level)'}: {_message(err, loc, schema)}")
    return lines


def _clean_loc(loc: tuple[Any, ...], schema: type[BaseModel]) -> Loc:
    """Hide a PLC table's internal `driver` level: opcua[0].driver.endpoint -> opcua[0].endpoint."""
    out = list(loc)
    if len(out) >= 3 and out[0] in getattr(schema, "plc_tables", ()) and out[2] == "driver":
        del out[2]
    return tuple(out)


def _message(err: dict[str, Any], loc: Loc, schema: type[BaseModel]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden" and len(loc) == 1:
        return _unknown_section(str(loc[0]), schema, err.get("input"))
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], schema)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {hint}expected one of: {', '.join(allowed)}" if allowed else "unknown key"
    value = err.get("input")
    header = ".".join(str(p) for p in loc if isinstance(p, str))  # the TOML table header of this key
    tables = bool(header) and bool(_allowed_keys(loc, schema))  # the key holds a table / tables
    section = tables and len(loc) == 1  # a top-level [section]
    if kind == "missing":
        return f"required section is missing: add a [{header}] table" if section else \
            "required key is missing"
    if kind in ("model_type", "dict_type") and section and not isinstance(value, list):
        return f"expected a table: write [{header}] with its keys below it, not {header} = {value!r}"
    if kind == "list_type" and isinstance(value, dict):
        if tables:
            return (f"expected an array of tables: write [[{header}]] (one [[{header}]] table per item), "
                    f"not [{header}]")
        return f"expected an array: write {loc[-1]} = [...], not a table"
    if kind in ("model_type", "dict_type") and isinstance(value, list) and tables:
        return f"expected one table: write [{header}], not [[{header}]]"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind != "value_error" and not isinstance(value, dict | list) and len(repr(value)) < 80:
        msg += f" (got {value!r})"
    if kind in ("int_type", "float_type", "bool_type") and isinstance(value, str):
        msg += "; write numbers and true/false without quotes"
    return msg


def _unknown_section(name: str, schema: type[BaseModel], value: Any) -> str:
    """An unknown top-level table: the sections, and the driver tables installed here; [[name]]
    tables of a driver that is not installed (or whose package is broken) say so."""
    drivers = getattr(schema, "plc_tables", ())
    sections = [k for k in schema.model_fields if k not in drivers]
    close = difflib.get_close_matches(name, [*sections, *drivers], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    msg = (f"unknown section; {hint}expected one of: {', '.join(sections)}, or a PLC table of an installed "
           f"driver: {', '.join(f'[[{d}]]' for d in drivers) or '(none installed)'}")
    if not close and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        from drivers.errors import DriverError, UnknownDriver
        from drivers.registry import plugin

        try:
            plugin(name)
        except UnknownDriver:
            msg += f"; no driver named {name!r} is installed: install its package or remove these tables"
        except DriverError as exc:  # installed, but its package is broken: the registry says how
            msg += f"; {str(exc).splitlines()[0]}"
    return msg


def _allowed_keys(loc: Loc, schema: type[BaseModel]) -> list[str]:
    """The keys the model at `loc` accepts (for 'unknown key' messages); [] when unsure."""
    model: Any = schema
    mapping = False  # the next string part is a free key of a [table.<name>] mapping
    for part in loc:
        if isinstance(part, int):
            continue
        if mapping:
            mapping = False
            continue
        fields = _fields(model)
        if part not in fields:
            return []
        model, mapping = _model_of(fields[part].annotation)
        if model is None:
            return []
    return [] if mapping else sorted(_fields(model))


def _fields(model: Any) -> dict[str, Any]:
    """A model's fields; a PLC table (a model with a `protocol`) offers its settings and its
    driver's keys as one table."""
    fields = dict(getattr(model, "model_fields", {}))
    if getattr(model, "protocol", None) is not None and "driver" in fields:
        fields.update(fields.pop("driver").annotation.model_fields)
    return fields


def _model_of(annotation: Any) -> tuple[Any, bool]:
    """(pydantic model inside an annotation, whether it sits in a dict) or (None, False)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is dict:
        return _model_of(get_args(annotation)[1])[0], True
    for arg in get_args(annotation):
        found, mapping = _model_of(arg)
        if found is not None:
            return found, mapping
    return None, False
