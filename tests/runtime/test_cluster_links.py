"""How `cluster up`'s parts reach the cluster: each child gets its own account's login
alone, the engines log in on NATS as svc-engine, and TLS comes from the data directory's
CA with a node certificate issued once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from actimesh.broker.client import TlsSettings
from actimesh.errors import ConfigError
from actimesh.runtime.cluster import CLUSTER_MQTT, ClusterLinks, _node_tls
from actimesh.runtime.config import Settings
from actimesh.security.acl import SERVICE_DISPATCH, SERVICE_ENGINE, SERVICE_MONITOR
from actimesh.security.certs import init_ca
from actimesh.security.registry import Credentials

LOGINS = {
    name: Credentials(name, f"{name}-password")
    for name in (SERVICE_ENGINE, SERVICE_DISPATCH, SERVICE_MONITOR)
}


def _links(tls: TlsSettings | None = None) -> ClusterLinks:
    return ClusterLinks(
        "127.0.0.1", ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223"), (1883, 1884), LOGINS, tls
    )


def test_each_child_is_handed_its_own_login_and_no_other() -> None:
    engine = _links().only(SERVICE_ENGINE)
    assert dict(engine.logins) == {SERVICE_ENGINE: LOGINS[SERVICE_ENGINE]}
    transport = engine.engine_transport()
    assert (transport.user, transport.password) == (SERVICE_ENGINE, f"{SERVICE_ENGINE}-password")
    assert transport.servers == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
    dispatch = _links().only(SERVICE_DISPATCH).mqtt_address(1)
    assert (dispatch.port, dispatch.protocol) == (1884, CLUSTER_MQTT)
    assert dispatch.login(SERVICE_DISPATCH)["username"] == SERVICE_DISPATCH
    assert dispatch.login(SERVICE_ENGINE)["password"] is None
    assert "password" not in repr(_links())


def test_an_engine_without_its_login_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=f"no login for {SERVICE_ENGINE}"):
        _links().only(SERVICE_DISPATCH).engine_transport()


def test_tls_needs_the_ca_and_issues_the_node_certificate_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert _node_tls(settings, wanted=False) is None
    with pytest.raises(ConfigError, match="actimesh certs init") as info:
        _node_tls(settings, wanted=True)
    assert "\n" not in str(info.value)
    init_ca(tmp_path / "data" / "certs")
    tls = _node_tls(replace(settings, broker=replace(settings.broker, tls=True)), wanted=False)
    assert tls is not None
    assert tls.cert.is_file()
    first = tls.cert.read_bytes()
    again = _node_tls(settings, wanted=True)
    assert again is not None
    assert again.cert.read_bytes() == first  # issued once, kept
    links = _links(TlsSettings(ca_file=tls.ca))
    assert links.engine_transport().tls == TlsSettings(ca_file=tls.ca)
    assert links.mqtt_address().url.startswith("mqtts://")
