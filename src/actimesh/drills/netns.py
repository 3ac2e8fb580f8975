"""A second host on this machine for partition drills: a network namespace joined to
this one by a veth pair, that can be cut off the network and healed.

A process frozen with SIGSTOP is not cut off: its sockets stay open, its peers' kernels
still acknowledge what they send it, and it resumes exactly where it stopped. A real
partition drops packets on the wire, so each side's keepalives and pings must find out.
One namespace with one veth pair is the smallest layout that does that: the host inside
has its own address (``10.x.y.2``), this namespace keeps the other end (``10.x.y.1``),
and whatever runs here and must reach the host inside (or be reached by it) listens on
that address instead of loopback. A bridge with a namespace per node would be
symmetric, but the nodes left here need no isolation from one another, and a bridge in
this namespace is one more device to clean up after a crash.

**Cutting** sets the *inside* end down. The outside end then only loses its carrier:
its address and the local route to it stay, so the processes here keep talking to one
another on ``10.x.y.1`` while nothing crosses to the host inside. (Setting the outside
end down instead would remove that local route and cut this side off from itself.)

**Cleaning up.** Deleting the namespace deletes both ends of the pair, so
:func:`isolated_host` leaves nothing behind on any exit (an exception in its body,
Ctrl-C, a failed test): it kills what still runs inside, then deletes the namespace.
Names carry a prefix and a random part, so runs side by side never meet. Traffic stays
on the pair: the subnet is a /30 under ``10.213.0.0/16`` that no route of this
namespace uses yet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from actimesh.errors import ActimeshError

__all__ = ["IsolatedHost", "NamespaceError", "isolated_host", "namespaces_unavailable"]

_POOL = ipaddress.IPv4Network("10.213.0.0/16")
_TIMEOUT_S = 10.0


class NamespaceError(ActimeshError):
    """A network namespace could not be made, cut or healed."""


def _ip() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")


def namespaces_unavailable() -> str | None:
    """Why no network namespace can be made here (``None`` when one can): they need
    root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's ``ip``."""
    if _ip() is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def _run(*argv: str) -> str:
    ip = _ip()
    if ip is None:
        raise NamespaceError("the `ip` command (iproute2) is not installed")
    try:
        done = subprocess.run(  # noqa: S603 (fixed argv, no shell)
            [ip, *argv], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NamespaceError(f"`ip {' '.join(argv)}` failed: {exc}") from exc
    if done.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class IsolatedHost:
    """A namespace joined to this one by a veth pair: ``address`` inside it,
    ``peer_address`` on this side."""

    netns: str
    address: str
    peer_address: str
    inner: str
    outer: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it in place: the
        pid is the command's)."""
        ip = _ip()
        if ip is None:
            raise NamespaceError("the `ip` command (iproute2) is not installed")
        return [ip, "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """Drop every packet between the host inside and the rest: its end of the pair
        goes down (see the module for why that end)."""
        _run("-n", self.netns, "link", "set", self.inner, "down")

    def heal(self) -> None:
        _run("-n", self.netns, "link", "set", self.inner, "up")

    def is_cut(self) -> bool:
        shown = _run("-n", self.netns, "-o", "link", "show", self.inner)
        flags = shown.split("<", 1)[-1].split(">", 1)[0].split(",")
        return "UP" not in flags

    def pids(self) -> list[int]:
        """The processes running inside."""
        return [int(pid) for pid in _run("netns", "pids", self.netns).split()]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of the pool that no route here uses (another run's pair included)."""
    taken = []
    for line in _run("-4", "route", "show", "table", "all").splitlines():
        for word in line.split()[:2]:  # "10.0.0.0/8 dev …", "local 10.0.0.1 dev …"
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(word, strict=False))
    for _ in range(64):
        start = _POOL.network_address + 4 * random.randrange(_POOL.num_addresses // 4)
        candidate = ipaddress.IPv4Network(f"{start}/30")
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    raise NamespaceError(f"no free /30 left in {_POOL}")


def _kill_inside(host: IsolatedHost) -> None:
    """SIGKILL what still runs in the namespace and wait until it is empty (a process
    left inside would keep the namespace's network alive after its name is gone)."""
    deadline = time.monotonic() + _TIMEOUT_S
    while pids := host.pids():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NamespaceError(f"processes {pids} still run in {host.netns}")
        time.sleep(0.05)


@contextlib.contextmanager
def isolated_host(prefix: str = "amnet") -> Iterator[IsolatedHost]:
    """A new namespace with loopback up, joined to this one by a veth pair; on leaving,
    whatever runs inside is killed and the namespace and the pair are gone."""
    reason = namespaces_unavailable()
    if reason is not None:
        raise NamespaceError(reason)
    tag = secrets.token_hex(3)
    netns = f"{prefix}-{tag}"
    # Interface names are at most 15 characters.
    inner, outer = f"{prefix[:5]}{tag}i", f"{prefix[:5]}{tag}o"
    subnet = _free_subnet()
    peer_address, address = (str(a) for a in subnet.hosts())
    host = IsolatedHost(netns, address, peer_address, inner, outer)
    _run("netns", "add", netns)
    try:
        _run("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns)
        _run("addr", "add", f"{peer_address}/30", "dev", outer)
        _run("link", "set", outer, "up")
        _run("-n", netns, "addr", "add", f"{address}/30", "dev", inner)
        _run("-n", netns, "link", "set", inner, "up")
        _run("-n", netns, "link", "set", "lo", "up")
        yield host
    finally:
        try:
            _kill_inside(host)
        finally:
            # Deletes the inside end, and the outside end with it.
            _run("netns", "delete", netns)
            with contextlib.suppress(NamespaceError):
                _run("link", "delete", outer)  # gone already, unless its peer never moved
