"""The same access rules on a NATS cluster: the registry's :class:`~actimesh.broker.dynsec.Access`
(what Mosquitto's Dynamic Security plugin enforces, :mod:`.acl`) rendered as NATS users.

* Every account with a bcrypt hash in the registry (:meth:`Registry.nats_hashes
  <actimesh.security.registry.Registry.nats_hashes>`) is one user, its name the
  account's; a disabled device is left out (refused at login, and disconnected by the
  reload that applies it). An account registered before the registry kept bcrypt
  hashes is left out too until its password is rotated, and so is one no ACL lets do
  anything here (the admin account, whose one topic is the plugin's).
* Each role's ACLs become permissions on the NATS subjects of their topics
  (:func:`~actimesh.broker.nats.subjects.topic_to_subject`): ``publishClientSend`` a
  publish grant, ``subscribePattern``/``subscribeLiteral`` a subscribe grant (a filter
  ending in ``#`` also grants its parent level, which an MQTT ``#`` matches and the
  server subscribes separately). NATS has no separate receive check: a message
  reaches only subscriptions the subscribe grant let through. Topics starting with
  ``$`` (the engines' MQTT share group, the plugin's control topic) have no meaning
  here and are left out.
* Devices, integrators and every service except the engine may connect only over MQTT;
  the engine (:data:`~actimesh.security.acl.SERVICE_ENGINE`) only over NATS, with
  :func:`~actimesh.broker.nats.auth.native_grants` besides its topics: among them, the
  reads of the MQTT listener's retained store for exactly the filters it may subscribe
  to (what an MQTT subscription to them would be given).

**Client ids** are carried as :attr:`~actimesh.broker.nats.auth.NatsUser.client_id` (each
MQTT account's own, as in the plugin's table): nats-server cannot bind one to a user,
the cluster's auth callout does (:mod:`actimesh.broker.nats.callout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from actimesh.broker.dynsec import Access, AclType
from actimesh.broker.nats.auth import ConnectionType, NatsAccess, NatsUser, native_grants
from actimesh.broker.nats.cluster import STATE_NAME, apply_access
from actimesh.broker.nats.subjects import topic_to_subject
from actimesh.security.acl import SERVICE_ENGINE, AclPolicy
from actimesh.security.registry import Registry

__all__ = ["NATS_CLUSTER_DIR", "apply_to_cluster", "nats_access", "registry_nats_access"]

#: Where a data directory's NATS cluster lives (``NatsCluster(data_dir / NATS_CLUSTER_DIR)``):
#: :func:`apply_to_cluster` finds it there.
NATS_CLUSTER_DIR = "nats"

#: Accounts that connect natively (NatsTransport), not over MQTT.
_NATIVE = frozenset({SERVICE_ENGINE})


def _subjects(topic: str, *, parent: bool) -> list[str]:
    subject = topic_to_subject(topic)
    if parent and subject.endswith(".>"):
        return [subject, subject[:-2]]
    return [subject]


def nats_access(access: Access, hashes: Mapping[str, str]) -> NatsAccess:
    """``access`` as NATS users; ``hashes``: each account's bcrypt hash (see the module)."""
    roles = {r.name: r for r in access.roles}
    users = []
    for client in access.clients:
        hashed = hashes.get(client.username)
        if client.disabled or hashed is None:
            continue
        publish: list[str] = []
        subscribe: list[str] = []
        for acl in (a for name in client.roles for a in roles[name].acls):
            if not acl.allow or acl.topic.startswith("$"):
                continue
            if acl.type is AclType.SEND:
                publish += _subjects(acl.topic, parent=False)
            elif acl.type in (AclType.SUBSCRIBE, AclType.SUBSCRIBE_WITHIN):
                subscribe += _subjects(acl.topic, parent=True)
        if not publish and not subscribe:
            continue  # nothing to do on a cluster (the admin account): no login either
        if client.username in _NATIVE:
            kinds = (ConnectionType.STANDARD,)
            more_publish, more_subscribe = native_grants(publish, subscribe)
            publish += more_publish
            subscribe += more_subscribe
        else:
            kinds = (ConnectionType.MQTT,)
        users.append(
            NatsUser(
                client.username,
                hashed,
                tuple(dict.fromkeys(publish)),
                tuple(dict.fromkeys(subscribe)),
                kinds,
                client.clientid if kinds == (ConnectionType.MQTT,) else None,
            )
        )
    return NatsAccess(tuple(users))


def registry_nats_access(registry: Registry, policy: AclPolicy) -> NatsAccess:
    """Every account of ``registry`` as NATS users, for ``policy``."""
    return nats_access(registry.access(policy), registry.nats_hashes())


def apply_to_cluster(data_dir: Path, policy: AclPolicy) -> list[str] | None:
    """Apply the registry of ``data_dir`` to its NATS cluster (``data_dir/nats``) if one
    was started there; returns the nodes reloaded, None when there is no cluster."""
    cluster_dir = data_dir / NATS_CLUSTER_DIR
    if not (cluster_dir / STATE_NAME).is_file():
        return None
    with Registry.open(data_dir) as registry:
        access = registry_nats_access(registry, registry.policy() or policy)
    return apply_access(cluster_dir, access)
