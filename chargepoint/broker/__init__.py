"""MQTT broker support: find or start a broker (launch) and an embedded pure-Python broker."""

from chargepoint.broker.embedded import EmbeddedBroker
from chargepoint.broker.launch import (
    BrokerHandle,
    BrokerStartError,
    ensure_broker,
    free_port,
    is_loopback,
    port_answers,
    start_mosquitto_subprocess,
    stop_process,
)

__all__ = [
    "BrokerHandle",
    "BrokerStartError",
    "EmbeddedBroker",
    "ensure_broker",
    "free_port",
    "is_loopback",
    "port_answers",
    "start_mosquitto_subprocess",
    "stop_process",
]
