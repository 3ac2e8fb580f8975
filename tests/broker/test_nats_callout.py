"""The auth callout (broker/nats/callout.py): its keys and tokens, its rule, and the
cluster's logins when some callouts, or all of them, are down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats import NatsCluster
from actimesh.broker.nats.auth import ConnectionType, NatsAccess, NatsUser, bcrypt_hash
from actimesh.broker.nats.callout import Refused, decide
from actimesh.broker.nats.cluster import apply_access
from actimesh.broker.nats.nkeys import KeyPair, Role, decode_jwt, encode_jwt, public_key_bytes
from actimesh.broker.nats.subjects import MQTT_QOS1_PREFIX, MQTT_QOS_HEADER
from actimesh.errors import BrokerError
from tests.broker.nats_secured import ENGINE, access_for, password_of
from tests.broker.test_nats_security import AGENCY, DEV, Mqtt, native
from tests.waiting import eventually_sync


def test_a_seed_gives_back_its_key_and_a_token_verifies_only_untouched() -> None:
    account = KeyPair.create(Role.ACCOUNT)
    again = KeyPair.from_seed(account.seed)
    assert again.public == account.public
    assert account.public.startswith("A")
    assert account.seed.startswith("SA")
    assert len(public_key_bytes(account.public, Role.ACCOUNT)) == 32
    with pytest.raises(ValueError, match="not a user nkey"):
        public_key_bytes(account.public, Role.USER)
    token = encode_jwt({"sub": "x", "nats": {"type": "user"}}, account)
    assert decode_jwt(token, Role.ACCOUNT)["sub"] == "x"
    head, _, sig = token.split(".")
    forged = encode_jwt({"sub": "y"}, KeyPair.create(Role.ACCOUNT)).split(".")[1]
    with pytest.raises(ValueError, match="signature"):
        decode_jwt(f"{head}.{forged}.{sig}", Role.ACCOUNT)
    with pytest.raises(ValueError, match="not a server nkey"):
        decode_jwt(token, Role.SERVER)  # signed by an account, not by a server
    with pytest.raises(ValueError, match="checksum"):
        KeyPair.from_seed(account.seed[:-2] + ("AA" if account.seed[-2:] != "AA" else "BB"))


def test_the_rule_binds_client_ids_and_connection_types() -> None:
    cam = NatsUser("cam-1", bcrypt_hash("pw"), (), (), (ConnectionType.MQTT,), "ag-cam-1")
    svc = NatsUser("svc-dispatch", bcrypt_hash("pw2"), (), (), (ConnectionType.MQTT,))
    dotted = NatsUser("cam.7", bcrypt_hash("pw3"), (), (), (ConnectionType.MQTT,), "ag-cam~7")
    access = NatsAccess((cam, svc, dotted))
    bound = frozenset({"ag-cam-1", "ag-cam~7"})

    def login(user: str, password: str, kind: str, client_id: str) -> str:
        outcome = decide(
            access, bound, {"type": kind, "mqtt_id": client_id}, {"user": user, "pass": password}
        )
        return outcome.kind if isinstance(outcome, Refused) else outcome.name

    assert login("cam-1", "pw", "mqtt", "ag-cam-1") == "cam-1"
    assert login("cam-1", "wrong", "mqtt", "ag-cam-1") == "login"
    assert login("cam-9", "pw", "mqtt", "ag-cam-9") == "login"
    assert login("cam-1", "pw", "nats", "") == "type"
    assert login("cam-1", "pw", "websocket", "ag-cam-1") == "type"
    assert login("cam-1", "pw", "mqtt", "ag-cam-2") == "client_id"
    assert login("svc-dispatch", "pw2", "mqtt", "ag-dispatch-1-ctl") == "svc-dispatch"
    assert login("svc-dispatch", "pw2", "mqtt", "ag-cam-1") == "client_id"
    # The server refuses a '.' in a client id: the bound id writes it '~', and only
    # that id is the device's.
    assert login("cam.7", "pw3", "mqtt", "ag-cam~7") == "cam.7"
    assert login("cam.7", "pw3", "mqtt", "ag-cam_7") == "client_id"
    assert login("cam.7", "pw3", "mqtt", "ag-cam-1") == "client_id"


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    access = access_for(AGENCY, [("cam-1", DeviceKind.BODY_CAM), ("cam-2", DeviceKind.BODY_CAM)])
    with NatsCluster(tmp_path_factory.mktemp("nats3"), size=3, access=access) as running:
        yield running


def _login_seconds(cluster: NatsCluster, node: int, device_id: str) -> tuple[str, float]:
    client = Mqtt(
        cluster.nodes[node].mqtt_port, f"{AGENCY}-{device_id}", device_id, password_of(device_id)
    )
    start = time.monotonic()
    try:
        return client.connect(), time.monotonic() - start
    finally:
        client.close()


@pytest.mark.integration
@pytest.mark.time_limit(90)
async def test_logins_need_one_callout_and_connections_outlive_them_all(
    trio: NatsCluster, tmp_path: Path
) -> None:
    # Two of three callouts gone: the third answers every node's logins.
    trio.stop_callout(0)
    trio.stop_callout(1)
    for node in (0, 1, 2):
        assert _login_seconds(trio, node, "cam-1")[0] == "Success"
    # All gone. What is connected stays connected and keeps working...
    holder = Mqtt(trio.nodes[0].mqtt_port, f"{AGENCY}-cam-2", "cam-2", password_of("cam-2"))
    engine = await native(trio, ENGINE, password_of(ENGINE))
    try:
        assert holder.connect() == "Success"
        assert holder.subscribe(f"{DEV}/cam-2/cmd")
        trio.stop_callout(2)
        subject = f"am.v1.{AGENCY}.dev.cam-2.cmd"
        await engine.request(
            MQTT_QOS1_PREFIX + subject, b"activate", headers={MQTT_QOS_HEADER: "1"}, timeout=5
        )
        await engine.publish(subject, b"activate", headers={MQTT_QOS_HEADER: "1"})
        eventually_sync(lambda: (f"{DEV}/cam-2/cmd", b"activate") in holder.received())
        # ...and a new login waits the server's auth_timeout (2 s) and is refused.
        answer, took = _login_seconds(trio, 1, "cam-1")
        assert answer != "Success"
        assert 1.5 < took < 5.0, took
        # An access change cannot be applied to connected clients then: it says so.
        with pytest.raises(BrokerError, match="no auth callout answers"):
            apply_access(trio.data_dir, trio.access)
        assert holder.disconnects == 0
    finally:
        holder.close()
        await engine.close()
    trio.start_callout(1)
    assert _login_seconds(trio, 2, "cam-1")[0] == "Success"
    for node in (0, 2):
        trio.start_callout(node)
