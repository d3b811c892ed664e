"""Node references as written in a config: namespace-URI node ids and browse paths (pure parsing).

No asyncua here: the config model validates tags with these parsers at load time, and
drivers.opcua.nodes turns them into the session's node ids.
"""

import base64
import binascii
import uuid
from dataclasses import dataclass

Identifier = int | str | bytes | uuid.UUID


@dataclass(frozen=True)
class NodeRef:
    """A node id whose namespace is named by URI (None means namespace 0, the OPC UA standard one)."""

    namespace_uri: str | None
    identifier: Identifier


@dataclass(frozen=True)
class PathElement:
    """One browse-path step: a browse name qualified by a namespace URI or, for legacy configs, an index."""

    namespace: str | int
    name: str


def _parse_identifier(kind: str, text: str) -> Identifier:
    if kind == "i":
        if not text.isdigit():
            raise ValueError(f"numeric identifier 'i={text}' must be a non-negative integer")
        return int(text)
    if kind == "s":
        if not text:
            raise ValueError("string identifier 's=' is empty")
        return text
    if kind == "g":
        try:
            return uuid.UUID(text)
        except ValueError:
            raise ValueError(f"guid identifier 'g={text}' is not a GUID") from None
    if kind == "b":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"opaque identifier 'b={text}' is not base64") from None
    raise ValueError(f"unknown identifier type {kind!r}: use i=, s=, g= or b=")


def parse_node_ref(text: str) -> NodeRef:
    """Parse "nsu=<uri>;s=Name" (or i=/g=/b=); a bare identifier means namespace 0.

    >>> parse_node_ref("nsu=urn:linesentry:plant;s=Conveyor.MotorCurrent").identifier
    'Conveyor.MotorCurrent'
    """
    rest = text.strip()
    uri: str | None = None
    if rest.startswith("nsu="):
        uri, sep, rest = rest[4:].partition(";")
        if not sep or not uri:
            raise ValueError(f"{text!r}: expected nsu=<namespace URI>;<i|s|g|b>=<identifier>")
    elif rest.startswith("ns="):
        idx, _, rest = rest[3:].partition(";")
        if idx.strip() != "0":
            raise ValueError(f"{text!r}: namespace indexes change when a server restarts; "
                             f"write nsu=<namespace URI>;{rest or 's=...'} instead of ns={idx}")
    kind, sep, ident = rest.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected <i|s|g|b>=<identifier>, e.g. nsu=urn:plant;s=Motor.Current")
    return NodeRef(uri, _parse_identifier(kind.strip(), ident))


def parse_browse_path(elements: list[str]) -> list[PathElement]:
    """Parse ["0:Objects", "urn:linesentry:plant:Plant", "2:Motor"] (namespace, last ':', browse name)."""
    if not elements:
        raise ValueError("a browse path needs at least one element, "
                         "e.g. [\"0:Objects\", \"urn:plant:Motor\"]")
    out = []
    for el in elements:
        ns, sep, name = el.rpartition(":")
        if not sep or not ns or not name:
            raise ValueError(f"element {el!r} must be <namespace URI or index>:<BrowseName>")
        out.append(PathElement(int(ns) if ns.isdigit() else ns, name))
    return out
