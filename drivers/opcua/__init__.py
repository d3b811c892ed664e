"""OPC UA driver (asyncua): subscriptions and polling, namespace-URI node ids, Basic256Sha256 security."""

from drivers.opcua.config import OpcUaConfig, OpcUaGroup, OpcUaSecurity, OpcUaTag
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.security import create_client_certificate

__all__ = [
    "OpcUaConfig", "OpcUaDriver", "OpcUaGroup", "OpcUaSecurity", "OpcUaTag", "create_client_certificate",
]
