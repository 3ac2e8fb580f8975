"""The managed broker's secure default: config, refusal to start open, live reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actimesh.broker.dynsec import Access
from actimesh.broker.endpoint import is_loopback
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener, render_config
from actimesh.broker.reload import reload_managed_broker
from actimesh.errors import BrokerError, ConfigError
from tests.conftest import SecureBroker
from tests.waiting import eventually_sync


def test_default_config_admits_no_anonymous_client(tmp_path: Path) -> None:
    lines = render_config(MosquittoConfig(data_dir=tmp_path, port=18830)).splitlines()
    assert "allow_anonymous false" in lines
    assert "allow_anonymous true" not in lines
    assert f"password_file {tmp_path}/passwd" in lines
    assert f"plugin_opt_config_file {tmp_path}/dynsec.json" in lines
    plugin = next(line for line in lines if line.startswith("plugin "))
    assert plugin.endswith("mosquitto_dynamic_security.so")
    # The plugin is asked first: it is loaded before the password file is named.
    assert lines.index(plugin) < lines.index(f"password_file {tmp_path}/passwd")
    assert not any(line.startswith("acl_file") for line in lines)
    assert f"pid_file {tmp_path}/mosquitto.pid" in lines
    assert "per_listener_settings false" in lines
    # Security lines come before the first listener: with per_listener_settings false
    # they are global, for every listener.
    assert lines.index("allow_anonymous false") < lines.index("listener 18830 127.0.0.1")


def test_insecure_anonymous_must_be_asked_for_by_name(tmp_path: Path) -> None:
    cfg = MosquittoConfig(data_dir=tmp_path, insecure_anonymous=True)
    lines = render_config(cfg).splitlines()
    assert "allow_anonymous true" in lines
    assert not any(line.startswith(("password_file", "acl_file", "plugin")) for line in lines)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_plain_listener_may_be_on_any_loopback_address(tmp_path: Path, host: str) -> None:
    assert is_loopback(host)
    MosquittoConfig(data_dir=tmp_path, host=host)


def _listener(tmp_path: Path, port: int = 8883) -> TlsListener:
    return TlsListener(
        port=port,
        certfile=tmp_path / "s.pem",
        keyfile=tmp_path / "s.key",
        cafile=tmp_path / "ca.pem",
    )


def test_tls_listener_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        _listener(tmp_path, port=0)
    with pytest.raises(ConfigError, match="share port"):
        MosquittoConfig(data_dir=tmp_path, port=8883, tls=_listener(tmp_path))
    with pytest.raises(ConfigError, match="without passwords"):
        MosquittoConfig(data_dir=tmp_path, tls=_listener(tmp_path), insecure_anonymous=True)
    cfg = MosquittoConfig(data_dir=tmp_path, tls=_listener(tmp_path))
    assert cfg.urls == ("mqtt://127.0.0.1:1883", "mqtts://0.0.0.0:8883")


def test_broker_without_registry_files_refuses_to_start(tmp_path: Path) -> None:
    broker = ManagedMosquitto(MosquittoConfig(data_dir=tmp_path, port=free_port()))
    with pytest.raises(BrokerError, match="no password file") as info:
        broker.start()
    assert "\n" not in str(info.value)
    assert not broker.running
    (tmp_path / "passwd").write_text("")
    with pytest.raises(BrokerError, match="no access file"):
        broker.start()
    (tmp_path / "access.json").write_text(Access((), ()).to_json())
    with pytest.raises(BrokerError, match="no admin login"):
        broker.start()


def _security_files(directory: Path) -> None:
    """Empty registry files: a broker nobody can log in to, but one that starts."""
    (directory / "passwd").write_text("")
    (directory / "access.json").write_text(Access((), ()).to_json())
    (directory / "admin").write_text("svc-admin\nx\n")


def test_missing_tls_files_are_a_one_line_error(tmp_path: Path) -> None:
    _security_files(tmp_path)
    listener = TlsListener(
        port=free_port(),
        certfile=tmp_path / "s.pem",
        keyfile=tmp_path / "s.key",
        cafile=tmp_path / "ca.pem",
    )
    broker = ManagedMosquitto(MosquittoConfig(data_dir=tmp_path, port=free_port(), tls=listener))
    with pytest.raises(BrokerError, match="certs init"):
        broker.start()


def test_broken_tls_files_are_reported_from_the_broker_log(tmp_path: Path) -> None:
    _security_files(tmp_path)
    for name in ("s.pem", "s.key", "ca.pem"):
        (tmp_path / name).write_text("not a certificate\n")
    listener = TlsListener(
        port=free_port(),
        host="127.0.0.1",
        certfile=tmp_path / "s.pem",
        keyfile=tmp_path / "s.key",
        cafile=tmp_path / "ca.pem",
    )
    broker = ManagedMosquitto(MosquittoConfig(data_dir=tmp_path, port=free_port(), tls=listener))
    with pytest.raises(BrokerError, match="TLS files") as info:
        broker.start()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- reload


def test_reload_keeps_the_process_and_is_logged(secure_mosquitto: SecureBroker) -> None:
    broker = secure_mosquitto.broker
    pid = broker.pid
    broker.reload()
    assert broker.pid == pid
    assert broker.running
    assert broker.log_tail(5).count("Reloading config.") >= 1


def test_reload_of_a_stopped_broker_is_an_error(tmp_path: Path) -> None:
    broker = ManagedMosquitto(MosquittoConfig(data_dir=tmp_path))
    with pytest.raises(BrokerError, match="not running"):
        broker.reload()


def test_reload_managed_broker_finds_the_broker_of_a_data_directory(
    secure_mosquitto: SecureBroker,
) -> None:
    broker = secure_mosquitto.broker
    offset = broker.config.log_path.stat().st_size
    assert reload_managed_broker(broker.config.data_dir) == broker.pid
    eventually_sync(
        lambda: b"Reloading config." in broker.config.log_path.read_bytes()[offset:], timeout=5
    )


def test_reload_managed_broker_never_signals_a_stranger(tmp_path: Path) -> None:
    assert reload_managed_broker(tmp_path) is None  # no pid file
    (tmp_path / "mosquitto.pid").write_text("not a pid\n")
    assert reload_managed_broker(tmp_path) is None
    # A live process that is not this data directory's broker (a recycled pid).
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "mosquitto.pid").write_text(f"{stranger.pid}\n")
        assert reload_managed_broker(tmp_path) is None
        assert stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGTERM)
        stranger.wait()
    (tmp_path / "mosquitto.pid").write_text(f"{stranger.pid}\n")  # gone now
    assert reload_managed_broker(tmp_path) is None


def test_pid_file_goes_with_the_broker(secure_mosquitto: SecureBroker) -> None:
    broker = secure_mosquitto.broker
    pid_path = broker.config.pid_path
    assert int(pid_path.read_text()) == broker.pid
    broker.stop()
    assert not pid_path.exists()
    assert reload_managed_broker(broker.config.data_dir) is None
    assert os.path.exists(broker.config.password_path)
