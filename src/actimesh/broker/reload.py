"""Applying the registry's access and password files to a running broker, without a restart.

A device removed or disabled in the registry must lose the broker at once, not at the
next restart, and a new one must be able to log in. Two mechanisms do it, in an order
that matters (see :func:`sync_access_of`): the Dynamic Security plugin is synced over
its control topic (:mod:`actimesh.broker.dynsec`), then ``SIGHUP`` makes mosquitto
reload the password file and re-check every connected client.

:class:`~actimesh.broker.mosquitto.ManagedMosquitto` does this for the broker it runs;
:func:`reload_managed_broker` does it from another process (``actimesh devices``) that
knows only the broker's data directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from actimesh.broker.dynsec import Access, AdminLogin, AdminRefusedError, sync_access
from actimesh.broker.mosquitto_conf import MosquittoFiles

__all__ = ["reload_managed_broker", "running_listener", "sync_access_of"]

_POLL_S = 0.02
#: How long a rotated admin login may wait for the broker to reload the password file.
_ADMIN_RETRY_S = 5.0


def sync_access_of(
    data_dir: Path, host: str, port: int, reload_passwords: Callable[[], None]
) -> int:
    """Apply the access and password files of the broker on ``data_dir``, listening on
    ``host:port``: the Dynamic Security plugin is brought into line first, then
    ``reload_passwords`` (a SIGHUP) reloads the password file. Returns the number of
    plugin commands.

    In that order a new account can log in only once it has its client id and roles.
    When the admin login itself was just rotated, the broker refuses it until the
    password file is reloaded: then the reload comes first, and the sync follows.
    """
    files = MosquittoFiles(data_dir)
    access = Access.from_json(files.access_path.read_text(encoding="utf-8"))
    login = AdminLogin.read(files.admin_path)
    try:
        commands = sync_access(host, port, login, access)
    except AdminRefusedError:
        reload_passwords()
        deadline = time.monotonic() + _ADMIN_RETRY_S
        while True:
            try:
                commands = sync_access(host, port, login, access)
                break
            except AdminRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_POLL_S)
    reload_passwords()
    return commands


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_pid(files: MosquittoFiles) -> int | None:
    """The pid of the managed broker running on ``files``, or None: no pid file, or the
    pid now belongs to another process (checked against its command line, so a stale
    pid file never names a stranger)."""
    try:
        pid = int(files.pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    conf = files.config_path.absolute()
    if (
        not argv
        or Path(argv[0].decode(errors="replace")).name != "mosquitto"
        or str(conf).encode() not in argv
    ):
        return None
    return pid


def running_listener(data_dir: Path) -> tuple[str, int] | None:
    """Host and port of the plain listener of the managed broker running on
    ``data_dir`` (what ``actimesh devices add`` tells a device), or None when none runs
    there: the broker may have been started with ``--broker-port``, so the settings
    file alone cannot say."""
    files = MosquittoFiles(data_dir)
    if _running_pid(files) is None:
        return None
    return files.plain_listener()


def reload_managed_broker(data_dir: Path) -> int | None:
    """Ask the managed broker running on ``data_dir`` to apply its access and password
    files, from any process: the plugin is synced over its control topic, then the
    broker gets SIGHUP. Returns without waiting for the broker to log the reload.

    Returns its pid, or None when no broker of that data directory runs (no pid file,
    or the pid now belongs to another process: the id is checked against the
    process's command line, so a stale pid file never signals a stranger).
    """
    files = MosquittoFiles(data_dir)
    pid = _running_pid(files)
    if pid is None:
        return None

    def hup() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)

    listener = files.plain_listener()
    if listener is not None and files.access_path.is_file():
        sync_access_of(data_dir, *listener, hup)
    else:
        hup()
    return pid if _alive(pid) else None
