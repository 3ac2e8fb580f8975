"""The broker side of the mesh: the wire contract and the transports that carry it.

The contract lives here and nowhere else: :mod:`.topics` (the topic scheme),
:mod:`.messages` (every payload, version 1, as documented in ``docs/asyncapi.yaml``),
:mod:`.codec` (strict msgpack decoding) and :mod:`.wire` (MQTT packets read without a
client library, for the lean readers).

The transport seam is :mod:`.transport`: what a service needs of a bus, with
:class:`MqttTransport` over an MQTT broker (:mod:`.client` for publishing, :mod:`.ingest`
and :mod:`.intake` for reading) and :class:`MemoryBus` in process (:mod:`.memory`).
The managed Mosquitto of a one-machine deployment is :mod:`.mosquitto` (the process),
:mod:`.mosquitto_conf` (its configuration), :mod:`.dynsec` (its accounts and ACLs) and
:mod:`.reload`; :mod:`.endpoint` parses broker addresses, and :mod:`.failover` picks
the next of a cluster's listeners when a link loses its node.

A NATS cluster for engines on several hosts is the subpackage :mod:`.nats` (the
managed nodes and the engine's side, with nats-py). It is imported by its own path and
not named here, so that this package does not need nats-py.
"""

from actimesh.broker.client import (
    InFlight,
    LinkSettings,
    LinkStats,
    MqttLink,
    MqttProtocol,
    Subscription,
    Will,
)
from actimesh.broker.codec import decode, encode
from actimesh.broker.endpoint import BrokerEndpoint, parse_broker_endpoint, parse_broker_url
from actimesh.broker.ingest import Publish, StreamSubscriber
from actimesh.broker.intake import ControlSubscriber, Delivery
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import activation_id
from actimesh.broker.mosquitto import ManagedMosquitto
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.broker.transport import Inbound, MqttTransport, Outbound, Transport

__all__ = [
    "BrokerEndpoint",
    "ControlSubscriber",
    "Delivery",
    "DeviceChannel",
    "InFlight",
    "Inbound",
    "LinkSettings",
    "LinkStats",
    "ManagedMosquitto",
    "MemoryBus",
    "MosquittoConfig",
    "MqttLink",
    "MqttProtocol",
    "MqttTransport",
    "Outbound",
    "Publish",
    "StreamSubscriber",
    "Subscription",
    "Topics",
    "Transport",
    "Will",
    "activation_id",
    "decode",
    "encode",
    "parse_broker_endpoint",
    "parse_broker_url",
]
