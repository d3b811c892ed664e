"""Server operation limits (Server/ServerCapabilities/OperationLimits), read once per session.

A server may cap how many nodes one Read, Write, TranslateBrowsePaths or CreateMonitoredItems
request carries and answers BadTooManyOperations beyond that, so every batched request of the
driver is split into chunks of at most the server's limit (or the config override, if smaller).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from asyncua import Client, ua

T = TypeVar("T")
_IDS = ua.ObjectIds
_LIMIT_NODES = {
    "read": _IDS.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "write": _IDS.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
    "translate": _IDS.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
    "monitor": _IDS.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
}


@dataclass(frozen=True)
class OperationLimits:
    """Most nodes per request; 0 means no limit."""

    read: int = 0
    write: int = 0
    translate: int = 0
    monitor: int = 0


def _cap(server: int, override: int | None) -> int:
    if override is None:
        return server
    return override if server == 0 else min(server, override)


def _value(dv: ua.DataValue) -> int:
    """A limit from its DataValue; 0 (unlimited) when the server does not publish it."""
    v = dv.Value.Value if dv.StatusCode.is_good() and dv.Value is not None else None
    return int(v) if isinstance(v, int) and v > 0 else 0


async def read_operation_limits(client: Client, override: int | None) -> OperationLimits:
    """MaxNodesPerRead alone first (the others are read within it), then the rest."""
    read_node = client.get_node(ua.NodeId(_LIMIT_NODES["read"]))
    read = _cap(_value((await client.read_attributes([read_node]))[0]), override)
    names = [k for k in _LIMIT_NODES if k != "read"]
    nodes = [client.get_node(ua.NodeId(_LIMIT_NODES[k])) for k in names]
    values = {}
    for part in chunks(list(zip(names, nodes, strict=True)), read):
        dvs = await client.read_attributes([n for _, n in part])
        values.update({k: _cap(_value(dv), override) for (k, _), dv in zip(part, dvs, strict=True)})
    return OperationLimits(read=read, **values)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size` (all at once when size is 0: no limit)."""
    step = size or max(1, len(items))
    for start in range(0, len(items), step):
        yield items[start:start + step]
