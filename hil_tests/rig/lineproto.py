"""A small InfluxDB line-protocol reader: (measurement, tags, fields, timestamp) from one line.

For checking what reached the rig's cloud (cloud-sync and HIL tests); the product only writes it."""

from __future__ import annotations


def _split(s: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes, honouring backslash escapes."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _value(v: str) -> str | int | float | bool:
    if v.startswith('"'):
        return _unescape(v[1:-1])
    if v.endswith("i"):
        return int(v[:-1])
    if v in ("true", "false"):
        return v == "true"
    return float(v)


def parse(line: str) -> tuple[str, dict[str, str], dict[str, str | int | float | bool], int]:
    head, fields, ts = _split(line, " ")
    name, *tags = _split(head, ",")
    tag_map = dict(_split(t, "=") for t in tags)
    field_map = {}
    for f in _split(fields, ","):
        k, v = _split(f, "=")
        field_map[_unescape(k)] = _value(v)
    return _unescape(name), {_unescape(k): _unescape(v) for k, v in tag_map.items()}, field_map, int(ts)
