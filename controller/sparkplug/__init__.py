"""The Sparkplug B edge node (docs/sparkplug.md): `payload` (the official protobuf schema),
`catalogue` (metric names, datatypes, aliases), `reporting` (by exception, deadbands), `sequence`
(seq, bdSeq), `commands` (the allow-list), `node` (the node on an MQTT link, with store and forward).
Importing this package imports nothing: the runtime names the outbox sink without the MQTT client."""

SINK = "sparkplug"  # the outbox sink of the node's stored messages (routed to it only)
