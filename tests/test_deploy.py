"""The shipped deployment files are accepted by the real programs they configure."""

from __future__ import annotations

import configparser
import getpass
import socket
import subprocess
import time
from pathlib import Path

from actimesh.broker.mosquitto import MosquittoConfig, find_mosquitto, free_port, render_config

DEPLOY = Path(__file__).parents[1] / "deploy"


def _options(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_external_broker_config_matches_the_managed_one(tmp_path: Path) -> None:
    shipped = _options((DEPLOY / "mosquitto" / "actimesh.conf").read_text())
    managed = _options(render_config(MosquittoConfig(data_dir=tmp_path)))
    for key in ("set_tcp_nodelay", "persistence", "max_packet_size", "queue_qos0_messages",
                "max_queued_messages", "autosave_interval"):  # fmt: skip
        assert shipped[key] == managed[key], key


def test_external_broker_config_starts_a_real_mosquitto(tmp_path: Path) -> None:
    text = (DEPLOY / "mosquitto" / "actimesh.conf").read_text()
    port = free_port()
    text = text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    text = text.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    text = text.replace("/var/log/mosquitto/mosquitto.log", f"{tmp_path}/m.log")
    conf = tmp_path / "external.conf"
    # Run as whoever runs the test (root in CI) rather than the `mosquitto` account.
    conf.write_text(f"user {getpass.getuser()}\n{text}")
    proc = subprocess.Popen([str(find_mosquitto()), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not open its port"
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    assert "Opening ipv4 listen socket on port" in (tmp_path / "m.log").read_text()


def test_systemd_unit_runs_actimesh_against_the_system_broker() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "actimesh.service")
    assert unit["Service"]["ExecStart"].split()[1:3] == ["up", "--config"]
    assert "--broker mqtt://127.0.0.1:1883" in unit["Service"]["ExecStart"]
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert "mosquitto.service" in unit["Unit"]["Requires"]
