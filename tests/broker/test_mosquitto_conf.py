"""The rendered mosquitto.conf and the checks on its settings, without starting a broker.

The secure default (no anonymous client, the plugin asked first) is tested in
test_mosquitto_security.py, beside the broker that enforces it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actimesh.broker.codec import MAX_PAYLOAD_BYTES
from actimesh.broker.mosquitto_conf import MosquittoConfig, render_config
from actimesh.errors import ConfigError


def test_rendered_config_disables_nagle_and_sets_limits(tmp_path: Path) -> None:
    cfg = MosquittoConfig(data_dir=tmp_path, port=18830)
    text = render_config(cfg)
    lines = text.splitlines()
    for expected in (
        "per_listener_settings false",
        "listener 18830 127.0.0.1",
        "persistence true",
        f"persistence_location {tmp_path}/",
        "autosave_interval 30",
        "set_tcp_nodelay true",
        f"max_packet_size {cfg.max_packet_size}",
        "max_queued_messages 10000",
        f"log_dest file {tmp_path}/mosquitto.log",
        "connection_messages true",
        "queue_qos0_messages false",
    ):
        assert expected in lines
    # mosquitto 2.0 reads one type per log_type line.
    assert [line for line in lines if line.startswith("log_type")] == [
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    assert cfg.max_packet_size > MAX_PAYLOAD_BYTES


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is switched to another user")
def test_rendered_config_keeps_root_as_root(tmp_path: Path) -> None:
    assert "user root" in render_config(MosquittoConfig(data_dir=tmp_path)).splitlines()


def test_relative_data_dir_is_rendered_absolute() -> None:
    text = render_config(MosquittoConfig(data_dir=Path("rel")))
    assert f"persistence_location {Path('rel').absolute()}/" in text.splitlines()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"port": 0}, "out of range"),
        ({"port": 70000}, "out of range"),
        ({"host": "bad host"}, "not valid"),
        ({"max_packet_size": MAX_PAYLOAD_BYTES}, "dead-lettered"),
        ({"autosave_interval_s": -1}, "autosave"),
        ({"max_queued_messages": -1}, "max_queued_messages"),
        ({"data_dir": Path("a\nb")}, "line break"),
        ({"host": "0.0.0.0"}, "stays on loopback"),
        ({"host": "192.0.2.1"}, "stays on loopback"),
    ],
)
def test_bad_settings_are_one_line_config_errors(
    tmp_path: Path, overrides: dict[str, object], fragment: str
) -> None:
    settings: dict[str, object] = {"data_dir": tmp_path, **overrides}
    with pytest.raises(ConfigError, match=fragment) as info:
        MosquittoConfig(**settings)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
