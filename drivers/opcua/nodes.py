"""Node addressing: namespace URIs and browse paths resolved to node ids on every new session.

A server's namespace array can change across restarts (another namespace registered
first shifts every index), so indexes are looked up per session and never cached
across sessions. The config-side parsing lives in drivers.opcua.noderef (no asyncua).
"""

from asyncua import Client, ua

from drivers.errors import DriverError
from drivers.opcua.limits import chunks
from drivers.opcua.noderef import NodeRef, PathElement, parse_browse_path, parse_node_ref


def _index(ns_array: list[str], uri: str) -> int:
    try:
        return ns_array.index(uri)
    except ValueError:
        raise DriverError(f"namespace URI {uri!r} is not on the server "
                          f"(server namespaces: {', '.join(ns_array)})") from None


def to_node_id(ref: NodeRef, ns_array: list[str]) -> ua.NodeId:
    """The node id of `ref` under this session's namespace array."""
    idx = 0 if ref.namespace_uri is None else _index(ns_array, ref.namespace_uri)
    return ua.NodeId(ref.identifier, idx)


def to_relative_path(path: list[PathElement], ns_array: list[str]) -> ua.RelativePath:
    elements = []
    for el in path:
        idx = el.namespace if isinstance(el.namespace, int) else _index(ns_array, el.namespace)
        elements.append(ua.RelativePathElement(
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences), IsInverse=False,
            IncludeSubtypes=True, TargetName=ua.QualifiedName(el.name, idx)))
    return ua.RelativePath(Elements=elements)


async def resolve_node_ids(client: Client, tags: list[tuple[str | None, list[str] | None]],
                           per_request: int) -> tuple[list[ua.NodeId | None], dict[int, str]]:
    """Node ids for (node, browse_path) tags, and why each unresolved one failed.

    One NamespaceArray read, then TranslateBrowsePaths in chunks of `per_request` (0: no limit).
    A tag whose namespace URI or browse path is not on the server gets None and a reason;
    the other tags are unaffected.
    """
    ns_array = await client.get_namespace_array()
    out: list[ua.NodeId | None] = [None] * len(tags)
    errors: dict[int, str] = {}
    paths: list[tuple[int, ua.RelativePath]] = []
    for i, (node, browse_path) in enumerate(tags):
        try:
            if node is not None:
                out[i] = to_node_id(parse_node_ref(node), ns_array)
            else:
                assert browse_path is not None
                paths.append((i, to_relative_path(parse_browse_path(browse_path), ns_array)))
        except DriverError as exc:
            errors[i] = str(exc)
    root = ua.NodeId(ua.ObjectIds.RootFolder)
    for part in chunks(paths, per_request):
        results = await client.translate_browsepaths(root, [p for _, p in part])
        for (i, _), res in zip(part, results, strict=True):
            if not res.StatusCode.is_good() or not res.Targets:
                errors[i] = (f"browse path {'/'.join(tags[i][1] or [])} not found on the server "
                             f"({res.StatusCode.name})")
                continue
            target = res.Targets[0].TargetId  # an ExpandedNodeId; the server index is 0 (local)
            out[i] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
    return out, errors


async def missing_eurange(client: Client, node_ids: dict[int, ua.NodeId], per_request: int) -> list[int]:
    """Which of these nodes have no EURange property (a percent deadband needs one)."""
    items = list(node_ids.items())
    eurange = ua.RelativePath(Elements=[ua.RelativePathElement(
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty), IsInverse=False, IncludeSubtypes=True,
        TargetName=ua.QualifiedName("EURange", 0))])
    missing = []
    for part in chunks(items, per_request):
        paths = [ua.BrowsePath(StartingNode=nid, RelativePath=eurange) for _, nid in part]
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        missing += [i for (i, _), res in zip(part, results, strict=True)
                    if not res.StatusCode.is_good() or not res.Targets]
    return missing
