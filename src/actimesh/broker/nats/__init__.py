"""The engine on a NATS cluster: :mod:`.cluster` runs one, and :mod:`.transport` is the
:class:`~actimesh.broker.transport.Transport` with nats-py (telemetry: a lean reader of
its own), devices staying on MQTT
(any node's MQTT listener).

Why each link is built the way it is:

* **Topics and subjects.** The server's MQTT listener names the NATS subject of an MQTT
  topic by a fixed rule (2.10 and later): ``/`` between levels becomes ``.``, a ``.``
  inside a level becomes ``//``, an empty level becomes ``/``; ``+`` and ``#`` become
  ``*`` and ``>``. :func:`topic_to_subject` and :func:`subject_to_topic` are that rule,
  so a device id with a dot (``cam.7``) is the same device on both sides.
* **Commands reach MQTT QoS 1 subscriptions** the way an MQTT publisher's QoS 1 message
  does inside the server: stored in the listener's JetStream stream (``$MQTT_msgs``,
  subject ``$MQTT.msgs.<subject>``, replicated), from which each QoS 1 subscription's
  durable consumer delivers it, on the device's node, and again after a reconnect to
  another node; the store's acknowledgement is the :class:`InFlight` confirmation. The
  ``Nmqtt-Pub: 1`` header says "QoS 1" to the server (a delivery that crosses a route
  needs it), and the same message is also published on the plain subject for QoS 0
  and NATS subscribers (which, seeing the header, a QoS 1 subscription skips: no
  duplicate). No stream yet (no MQTT client ever connected) means no session could
  hold it: accepted, as a broker accepts a message nobody subscribes to.
  ``publish_nowait`` writes into the connection's buffer and ``flush`` writes it to the
  socket in this turn (one adapter reaches nats-py's buffer: :func:`._protocol.hand_over`).
* **Trigger events are durable in JetStream** (:class:`NatsControl`) from the moment
  the device has its PUBACK: a device's QoS 1 message is acknowledged once the MQTT
  listener stored it in ``$MQTT_msgs`` (R3), and each subscription of a control link is
  a durable pull consumer on that very stream (filter ``$MQTT.msgs.<subject>``,
  explicit acks). The stream keeps a message while a consumer has not acknowledged it
  (interest retention), so nothing the device was told is stored can be lost between
  the listener and the engine. (A stream of our own capturing the plain subject was
  tried first: the capture is not acknowledged to anyone, and a trigger raised while
  that stream elected a new leader after a node's loss was lost.) A shared
  subscription (``$share/<group>/<filter>``, as the engine asks for events) becomes a
  consumer named after the group and the filter, so every replica pulls from the same
  one: each event goes to one replica, and one that dies before acknowledging leaves it
  to be redelivered to another after ``ack_wait``. An unshared one (presence, acks) is
  the link's own consumer, starting with the last stored message of each subject, kept
  ``session_expiry_s`` after the link goes. ``admit`` runs as each message arrives; a
  refused one is acknowledged at once. Admitted messages wait in one queue per source
  and batches take one from each in turn, as
  :class:`~actimesh.broker.intake.ControlSubscriber` does; the consumer's
  ``max_ack_pending`` bounds the backlog. The stream exists once an MQTT client has
  connected (:meth:`NatsCluster.start <actimesh.broker.nats.cluster.NatsCluster.start>`
  connects one); until then a control link retries and says why in ``last_error``.
  Messages stored before a consumer existed are not kept for it, so an unshared
  subscription also reads the listener's retained store (``$MQTT_rmsgs``, the last
  message of each topic) once its consumer exists, as an MQTT subscriber gets retained
  messages: a device's presence from before the engine's first start is known at once
  (:mod:`.retained`).
* **Telemetry** (:class:`NatsStream`) is core NATS, QoS 0, read without nats-py: a
  lean subscriber that speaks the client protocol itself (:mod:`._wire`), reads into one
  buffer, hands the handler batches and drops the *oldest* of a full backlog (counted),
  as the single-machine intake does (:mod:`actimesh.broker.ingest`). nats-py's callback
  per message, in the engine's loop, delayed the trigger path under a telemetry flood.
* **No last will.** NATS has none, and the engine-status will of the ``cmd`` link cannot
  be set on the MQTT side from here. What replaces it: the link publishes its will
  itself when it is stopped (cancelled), so a clean stop still says offline; and the
  engine renews its online status every ``status_every_s`` with a ``ttl``, so a reader
  sees a crashed engine's status go stale within the ttl. ``retain`` is not honoured:
  MQTT's retained store is the listener's own, so an MQTT subscriber connecting later
  sees the engine status at its next renewal.

Requests to the JetStream API are made here with ``asyncio.timeout`` rather than
through nats-py's JetStream layer, whose waits use ``asyncio.wait_for`` (which can lose a
cancellation on Python 3.11: FIELD-NOTES §8).

* **Secured.** Nobody connects without a login: :mod:`.auth` renders the users and
  their permissions (from the device registry: :mod:`actimesh.security.nats_access`),
  :mod:`.cluster` includes them on every node, with TLS on every listener and mutual
  TLS on routes if asked, and applies changes live. What nats-server cannot do by
  configuration, bind an MQTT client id to a user, an auth callout does
  (:mod:`.callout`, one per node: docs/SCALING.md).
"""

from actimesh.broker.nats.auth import ConnectionType, NatsAccess, NatsUser, bcrypt_hash
from actimesh.broker.nats.cluster import (
    NatsCluster,
    NatsNode,
    NatsTls,
    NodeHost,
    NodePorts,
    apply_access,
    find_nats_server,
)
from actimesh.broker.nats.control import NatsControl
from actimesh.broker.nats.outbound import NatsOutbound
from actimesh.broker.nats.stream import NatsStream
from actimesh.broker.nats.subjects import subject_to_topic, topic_to_subject
from actimesh.broker.nats.transport import NatsTransport

__all__ = [
    "ConnectionType",
    "NatsAccess",
    "NatsCluster",
    "NatsControl",
    "NatsNode",
    "NatsOutbound",
    "NatsStream",
    "NatsTls",
    "NatsTransport",
    "NatsUser",
    "NodeHost",
    "NodePorts",
    "apply_access",
    "bcrypt_hash",
    "find_nats_server",
    "subject_to_topic",
    "topic_to_subject",
]
