"""The shared HTTP listener: one-line errors for a taken port, addresses as URLs."""

from __future__ import annotations

import socket

import pytest

from actimesh import listener
from actimesh.errors import ConfigError


def test_a_taken_port_is_a_one_line_error_that_says_what_to_change() -> None:
    taken = listener.bind("127.0.0.1", 0, what="x", fix="y")
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as caught:
            listener.bind(
                "127.0.0.1", port, what="the evidence upload API", fix="set [evidence] port"
            )
    finally:
        taken.close()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the evidence upload API cannot listen on 127.0.0.1:{port}")
    assert message.endswith("set [evidence] port")


def test_urls_name_the_bound_port_and_bracket_ipv6() -> None:
    four = listener.bind("127.0.0.1", 0, what="x", fix="y")
    try:
        assert listener.url(listener.address(four), tls=True) == (
            f"https://127.0.0.1:{four.getsockname()[1]}"
        )
        assert not four.getblocking()
    finally:
        four.close()
    if not socket.has_ipv6:  # pragma: no cover - every CI machine has it
        pytest.skip("no IPv6")
    try:
        six = listener.bind("::1", 0, what="x", fix="y")
    except ConfigError:  # pragma: no cover - IPv6 disabled in this container
        pytest.skip("IPv6 loopback unavailable")
    try:
        assert listener.url(listener.address(six), tls=False) == (
            f"http://[::1]:{six.getsockname()[1]}"
        )
    finally:
        six.close()
