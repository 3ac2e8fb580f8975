"""Accounts of a simulated fleet on the managed broker, without ghosts of the last one.

Every start registers the simulated fleet anew (fresh passwords and keys) and the
registry removes the simulated devices the new fleet lacks (another seed, fewer crews).
But the broker keeps what those devices last published as retained presence, across
restarts: the engine would hear each one again on subscribing and refuse it as a device
the registry does not know (``rejected … presence: unregistered``), and the dispatch map
would show it. So before they are removed, each of them logs in once more, with
credentials of this start, and clears its retained presence (an empty retained message,
as MQTT says), and its persistent session goes with that clean login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from actimesh.broker.client import LinkSettings, MqttLink
from actimesh.broker.topics import Topics, device_client_id
from actimesh.security.provision import provision_fleet
from actimesh.security.registry import REGISTRY_NAME, DeviceCredentials, DeviceSpec, Registry

__all__ = ["register_simulated_fleet", "simulated_devices"]


def simulated_devices(data_dir: Path) -> list[DeviceSpec]:
    """The simulated devices the registry of ``data_dir`` holds: read them before the
    managed broker's start, which removes them until the new fleet is registered."""
    if not (data_dir / REGISTRY_NAME).exists():
        return []
    with Registry.open(data_dir) as registry:
        return [DeviceSpec(d.device_id, d.kind, d.unit) for d in registry.devices() if d.simulated]


async def _clear_presence(topics: Topics, host: str, port: int, creds: DeviceCredentials) -> None:
    link = MqttLink(
        LinkSettings(
            host=host,
            port=port,
            client_id=device_client_id(topics.agency, creds.device_id),
            username=creds.device_id,
            password=creds.password,
        ),
        None,
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(), name=f"retire-{creds.device_id}")
        await link.wait_connected(timeout=10.0)
        await link.publish(topics.presence(creds.device_id), b"", qos=1, retain=True)
        task.cancel()


async def register_simulated_fleet(
    data_dir: Path,
    specs: Sequence[DeviceSpec],
    *,
    previous: Sequence[DeviceSpec],
    topics: Topics,
    host: str,
    port: int,
    reload: Callable[[], Awaitable[None]],
    save: Callable[[], Awaitable[None]],
) -> dict[str, DeviceCredentials]:
    """Register the simulated fleet ``specs`` (none: no fleet) in ``data_dir``'s registry
    for the managed broker at ``host:port`` (``reload`` makes it read its files again,
    ``save`` writes its database), first clearing the retained presence of the
    ``previous`` fleet's devices it lacks (:func:`simulated_devices`). The fleet's
    credentials."""
    keep = {s.device_id for s in specs}
    gone = [p for p in previous if p.device_id not in keep]
    if gone:
        ghosts = await asyncio.to_thread(provision_fleet, data_dir, [*specs, *gone])
        await reload()
        async with asyncio.TaskGroup() as tg:
            for spec in gone:
                tg.create_task(_clear_presence(topics, host, port, ghosts[spec.device_id]))
        # Saved before the reload that removes their accounts: that reload has crashed
        # Mosquitto 2.0.11 (ManagedMosquitto.keep_running), and a broker restarted from
        # an older save would bring their presence back for the engine to refuse.
        await save()
    creds = await asyncio.to_thread(provision_fleet, data_dir, list(specs))
    await reload()
    return creds
