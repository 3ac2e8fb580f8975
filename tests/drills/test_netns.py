"""The second host of the partition drills: a namespace joined by a veth pair, that is
reached both ways, cut off (both ways), healed, and gone after any exit."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from actimesh.drills.netns import IsolatedHost, isolated_host, namespaces_unavailable
from tests.waiting import eventually_sync

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(namespaces_unavailable() is not None, reason=f"{namespaces_unavailable()}"),
]

#: A TCP server inside the namespace: prints "ready", then answers each connection's
#: first bytes with "echo:" and them.
_ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], 7000))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(64))
"""


def _echo(address: str, port: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection((address, port), timeout=timeout) as conn:
        conn.sendall(b"hi")
        return conn.recv(64)


def _reaches(address: str, port: int) -> bool:
    try:
        return _echo(address, port, timeout=0.5) == b"echo:hi"
    except OSError:
        return False


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _link_exists(name: str) -> bool:
    shown = subprocess.run(
        ["ip", "link", "show", name], capture_output=True, timeout=10, check=False
    )
    return shown.returncode == 0


def _inside(host: IsolatedHost, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        host.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture
def echo_here() -> Iterator[socket.socket]:
    """A socket for an echo server on this side, for the host inside to reach; the test
    binds it (to its end of the pair); closing it ends the server's thread."""
    server = socket.socket()
    yield server
    server.close()


def _serve_in_thread(server: socket.socket) -> threading.Thread:
    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo:" + conn.recv(64))

    thread = threading.Thread(target=serve, name="echo-here", daemon=True)
    thread.start()
    return thread


def _reached_from_inside(host: IsolatedHost, port: int) -> bool:
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    c = socket.create_connection(({host.peer_address!r}, {port}), timeout=1)\n"
        "    c.sendall(b'hi'); sys.exit(0 if c.recv(64) == b'echo:hi' else 1)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    done = subprocess.run(
        host.argv([sys.executable, "-c", probe]), capture_output=True, timeout=10, check=False
    )
    return done.returncode == 0


def test_the_host_is_reached_both_ways_cut_off_both_ways_and_healed(
    echo_here: socket.socket,
) -> None:
    with isolated_host("amtst") as host:
        echo_here.bind((host.peer_address, 0))
        echo_here.listen()
        _serve_in_thread(echo_here)
        port_here = echo_here.getsockname()[1]
        server = _inside(host, sys.executable, "-c", _ECHO, host.address)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert server.pid in host.pids()

        assert _echo(host.address, 7000) == b"echo:hi"
        assert _reached_from_inside(host, port_here)

        host.cut()
        assert host.is_cut()
        assert not _reaches(host.address, 7000)
        assert not _reached_from_inside(host, port_here)
        # This side keeps its end's address: what runs here still reaches it.
        assert _echo(host.peer_address, port_here) == b"echo:hi"

        host.heal()
        assert not host.is_cut()
        eventually_sync(lambda: _reaches(host.address, 7000), timeout=10, every=0.1)
        assert _reached_from_inside(host, port_here)
    # What ran inside is gone with the namespace and both ends of the pair.
    assert server.wait(timeout=10) != 0
    server.stdout.close()
    assert host.netns not in _namespaces()
    assert not _link_exists(host.outer)


def _fail_inside(
    raised: type[BaseException], seen: list[tuple[IsolatedHost, subprocess.Popen[str]]]
) -> None:
    with isolated_host("amtst") as host:
        sleeper = _inside(host, "sleep", "300")
        seen.append((host, sleeper))
        eventually_sync(lambda: sleeper.pid in host.pids(), timeout=10, every=0.05)
        host.cut()
        raise raised("the body failed")


@pytest.mark.parametrize("raised", [RuntimeError, KeyboardInterrupt])
def test_nothing_is_left_when_the_body_raises(raised: type[BaseException]) -> None:
    """A failed test and Ctrl-C (KeyboardInterrupt) leave no namespace, veth or process."""
    seen: list[tuple[IsolatedHost, subprocess.Popen[str]]] = []
    with pytest.raises(raised):
        _fail_inside(raised, seen)
    ((host, sleeper),) = seen
    assert sleeper.wait(timeout=10) == -9  # killed, not left running
    assert sleeper.stdout is not None
    sleeper.stdout.close()
    assert host.netns not in _namespaces()
    assert not _link_exists(host.outer)


def test_two_hosts_side_by_side_get_their_own_names_and_subnets() -> None:
    with isolated_host("amtst") as one, isolated_host("amtst") as other:
        assert one.netns != other.netns
        assert one.outer != other.outer
        assert len({one.address, one.peer_address, other.address, other.peer_address}) == 4
        # Each on its own pair: cutting one leaves the other reachable.
        server = _inside(other, sys.executable, "-c", _ECHO, other.address)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        one.cut()
        assert _echo(other.address, 7000) == b"echo:hi"
    assert server.wait(timeout=10) != 0
    server.stdout.close()
