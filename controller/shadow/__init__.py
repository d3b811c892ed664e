"""The device shadow (docs/shadow.md): the fleet's desired state in, this line's reported state
out, over retained MQTT topics, with versions on both sides. `document` is the pure logic (versions,
last writer wins per field, delta, rejections), `fields` the five fields and how each is applied
through `Operations`, `store` the shadow file, `reported` the reported state, `agent` the MQTT side."""

from controller.shadow.agent import ShadowAgent

__all__ = ["ShadowAgent"]
