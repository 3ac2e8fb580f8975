"""The managed Mosquitto: start/stop, failures that read as one line, persistence.

The lifecycle tests here run the broker with ``insecure_anonymous=True`` (through
``_config``): they test starting, stopping and persistence, with anonymous clients. The
secure default itself is tested below and in tests/security/.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker import mosquitto
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.broker.mosquitto import INSTALL_HINT, ManagedMosquitto, find_mosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import Topics
from actimesh.errors import BrokerError, BrokerNotInstalledError
from tests.waiting import eventually, eventually_sync

TIMEOUT_S = 5.0


def _config(data_dir: Path, **overrides: object) -> MosquittoConfig:
    settings: dict[str, object] = {"insecure_anonymous": True, "port": free_port(), **overrides}
    return MosquittoConfig(data_dir=data_dir, **settings)  # type: ignore[arg-type]


def _assert_reaped(pid: int) -> None:
    # A zombie would still be our child; a reaped one is not.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stopped(broker: ManagedMosquitto) -> bool:
    # A call, not the property: mypy would keep an earlier `assert broker.running`.
    return not broker.running and broker.pid is None


def _fake_binary(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-mosquitto"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script


async def _retained(broker: ManagedMosquitto, topic: str) -> bytes | None:
    """The retained payload on ``topic``, or None if the broker has none."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    assert message.retain
                    assert isinstance(message.payload, bytes)
                    return message.payload
        except TimeoutError:
            return None
    return None


# ---------------------------------------------------------------------- binary


def test_missing_binary_raises_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("actimesh.broker.mosquitto.FALLBACK_PATHS", (tmp_path / "nope",))
    with pytest.raises(BrokerNotInstalledError) as info:
        find_mosquitto()
    assert str(info.value) == INSTALL_HINT
    assert "apt-get install mosquitto" in INSTALL_HINT
    broker = ManagedMosquitto(_config(tmp_path / "data"))
    with pytest.raises(BrokerNotInstalledError):
        broker.start()
    assert not broker.running


def test_binary_is_found_in_sbin_when_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = find_mosquitto()
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_mosquitto(fallbacks=(tmp_path / "nope", real)) == real


# ---------------------------------------------------------------------- lifecycle


def test_start_waits_until_connectable_and_stop_reaps(tmp_path: Path) -> None:
    broker = ManagedMosquitto(_config(tmp_path))
    broker.start()
    pid = broker.pid
    assert pid is not None
    try:
        assert broker.running
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        with socket.create_connection((broker.host, broker.port), timeout=1):
            pass
        assert "running" in broker.log_tail(5)
        broker.start()  # already running: nothing happens
        assert broker.pid == pid
    finally:
        broker.stop()
    assert _stopped(broker)
    _assert_reaped(pid)
    assert "terminating" in broker.log_tail(3)
    broker.stop()  # stopping twice is harmless


async def test_round_trip_through_session_broker(mosquitto: ManagedMosquitto, agency: str) -> None:
    topic = Topics(agency).telemetry("bc-1")
    sent = Telemetry(ts=time.time(), state=DeviceState.RECORDING, lat=51.5, lon=-0.12, acc=4.0)
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port) as receiver,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as sender,
    ):
        await receiver.subscribe(topic, qos=1)
        await sender.publish(topic, encode(sent), qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(receiver.messages))
    assert message.topic.value == topic
    assert isinstance(message.payload, bytes)
    assert decode(Telemetry, message.payload) == sent


async def test_async_context_manager_starts_and_stops(tmp_path: Path, agency: str) -> None:
    async with ManagedMosquitto(_config(tmp_path)) as broker:
        assert broker.running
        pid = broker.pid
        assert pid is not None
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(f"am/v1/{agency}/probe", b"x", qos=1)
    assert _stopped(broker)
    _assert_reaped(pid)


def test_sync_context_manager_starts_and_stops(tmp_path: Path) -> None:
    with ManagedMosquitto(_config(tmp_path)) as broker:
        assert broker.running
    assert _stopped(broker)


def test_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = ManagedMosquitto(_config(tmp_path, port=port))
        with pytest.raises(BrokerError) as info:
            broker.start()
    assert str(info.value) == (
        f"port {port} on 127.0.0.1 is already in use: pass --broker-port N, "
        f"or --broker mqtt://127.0.0.1:{port} to use the broker already running there"
    )
    assert not broker.running
    # The old failure in the shared log does not spoil a later start on a free port.
    with ManagedMosquitto(_config(tmp_path)) as again:
        assert again.running


def test_port_of_running_broker_is_in_use(mosquitto: ManagedMosquitto, tmp_path: Path) -> None:
    clash = ManagedMosquitto(_config(tmp_path, port=mosquitto.port))
    with pytest.raises(BrokerError, match="already in use"):
        clash.start()
    assert mosquitto.running


def test_broker_that_exits_early_is_reported_with_log_reason(tmp_path: Path) -> None:
    binary = _fake_binary(
        tmp_path,
        "import sys\nprint('1: Error: Unknown configuration variable \"x\".')\nsys.exit(3)\n",
    )
    broker = ManagedMosquitto(_config(tmp_path / "data"), binary=binary)
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert "\n" not in message
    assert "exited with code 3" in message
    assert 'Unknown configuration variable "x".' in message
    assert not broker.running


def test_broker_that_never_listens_times_out_and_is_killed(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "import time\ntime.sleep(60)\n")
    broker = ManagedMosquitto(_config(tmp_path / "data"), binary=binary, start_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"did not accept connections .* within 0.3 s"):
        broker.start()
    assert time.monotonic() - started < 5
    assert not broker.running


_STUBBORN = """\
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
conf = open(sys.argv[2]).read().splitlines()
port = int(next(line.split()[1] for line in conf if line.startswith("listener ")))
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen()
print("stubborn broker running", flush=True)
time.sleep(60)
"""


def test_stop_kills_a_broker_that_ignores_sigterm(tmp_path: Path) -> None:
    broker = ManagedMosquitto(_config(tmp_path / "data"), binary=_fake_binary(tmp_path, _STUBBORN))
    broker.start()
    pid = broker.pid
    assert pid is not None
    started = time.monotonic()
    broker.stop(timeout=0.2)
    assert time.monotonic() - started < 3
    _assert_reaped(pid)


async def test_astop_kills_a_broker_that_ignores_sigterm(tmp_path: Path) -> None:
    broker = ManagedMosquitto(_config(tmp_path / "data"), binary=_fake_binary(tmp_path, _STUBBORN))
    await broker.astart()
    pid = broker.pid
    assert pid is not None
    await broker.astop(timeout=0.2)
    assert not broker.running
    _assert_reaped(pid)


async def test_cancelled_start_leaves_no_broker(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "import time\ntime.sleep(60)\n")
    broker = ManagedMosquitto(_config(tmp_path / "data"), binary=binary)
    task = asyncio.create_task(broker.astart())
    # Launched: the start now waits for a broker that never listens.
    pid: int = await eventually(lambda: broker.pid, timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not broker.running
    _assert_reaped(pid)


# ---------------------------------------------------------------------- persistence


async def test_retained_message_survives_graceful_restart(
    fresh_mosquitto: ManagedMosquitto, agency: str
) -> None:
    topic = Topics(agency).presence("bc-1")
    async with aiomqtt.Client(fresh_mosquitto.host, fresh_mosquitto.port) as client:
        await client.publish(topic, b"online", qos=1, retain=True)
    await fresh_mosquitto.arestart()
    assert (fresh_mosquitto.config.data_dir / "mosquitto.db").is_file()
    assert await _retained(fresh_mosquitto, topic) == b"online"


async def test_kill_is_abrupt_and_loses_unsaved_state(
    fresh_mosquitto: ManagedMosquitto, agency: str
) -> None:
    topic = Topics(agency).presence("bc-1")
    pid = fresh_mosquitto.pid
    assert pid is not None
    async with aiomqtt.Client(fresh_mosquitto.host, fresh_mosquitto.port) as client:
        await client.publish(topic, b"online", qos=1, retain=True)
    fresh_mosquitto.kill()
    assert _stopped(fresh_mosquitto)
    _assert_reaped(pid)
    # The autosave interval (30 s) has not passed, and SIGKILL saves nothing.
    await fresh_mosquitto.astart()
    assert await _retained(fresh_mosquitto, topic) is None


async def test_a_save_keeps_what_a_kill_would_lose(
    fresh_mosquitto: ManagedMosquitto, agency: str
) -> None:
    topics = Topics(agency)
    kept, cleared = topics.presence("bc-1"), topics.presence("bc-2")
    async with aiomqtt.Client(fresh_mosquitto.host, fresh_mosquitto.port) as client:
        await client.publish(kept, b"online", qos=1, retain=True)
        await client.publish(cleared, b"online", qos=1, retain=True)
    await fresh_mosquitto.asave()
    async with aiomqtt.Client(fresh_mosquitto.host, fresh_mosquitto.port) as client:
        await client.publish(cleared, b"", qos=1, retain=True)
    await fresh_mosquitto.asave()
    fresh_mosquitto.kill()  # no save of its own, as in a crash
    await fresh_mosquitto.astart()
    assert await _retained(fresh_mosquitto, kept) == b"online"
    assert await _retained(fresh_mosquitto, cleared) is None


async def test_a_stopped_broker_cannot_be_saved(fresh_mosquitto: ManagedMosquitto) -> None:
    fresh_mosquitto.kill()
    with pytest.raises(BrokerError, match=r"cannot save the broker at .*: it is not running"):
        await fresh_mosquitto.asave()


def test_sync_restart_keeps_retained_messages(
    fresh_mosquitto: ManagedMosquitto, agency: str
) -> None:
    topic = Topics(agency).presence("bc-2")
    fresh_mosquitto.restart()
    assert fresh_mosquitto.running
    asyncio.run(_publish_retained(fresh_mosquitto, topic))
    fresh_mosquitto.restart()
    assert asyncio.run(_retained(fresh_mosquitto, topic)) == b"on"


async def _publish_retained(broker: ManagedMosquitto, topic: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, b"on", qos=1, retain=True)


def test_relative_data_dir_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`actimesh up --data-dir actimesh-data` passes a relative path; the broker runs in it."""
    monkeypatch.chdir(tmp_path)
    broker = ManagedMosquitto(_config(Path("rel-data")))
    broker.start()
    try:
        assert broker.running
    finally:
        broker.stop()


class _Sockets:
    """Stands in for ``socket.socket``: every bind succeeds except on ``taken`` ports."""

    def __init__(self, taken: set[int]) -> None:
        self.taken = taken
        self.tried: list[int] = []

    def __call__(self, *_: object) -> _Sockets:
        return self

    def __enter__(self) -> _Sockets:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self.tried.append(address[1])
        if address[1] in self.taken:
            raise OSError(98, "Address already in use")


def test_free_port_does_not_hand_out_the_same_port_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain and a TLS listener picked one after the other must differ, even when the
    same port comes up twice."""
    picks = iter([30001, 30001, 30002])
    monkeypatch.setattr(random, "choice", lambda _ports: next(picks))
    monkeypatch.setattr(socket, "socket", _Sockets(taken=set()))
    monkeypatch.setattr(mosquitto, "_RECENT_PORTS", deque(maxlen=8))
    assert mosquitto.free_port() == 30001
    assert mosquitto.free_port() == 30002


def test_free_port_stays_below_the_ephemeral_range_and_skips_taken_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outgoing connections take their source ports from the ephemeral range: a port
    picked there could be taken by one before the listener binds it (seen: an evidence
    listener refused "Address already in use" in the suite)."""
    ephemeral = tmp_path / "ip_local_port_range"
    ephemeral.write_text("40000\t60999\n")
    monkeypatch.setattr(mosquitto, "_EPHEMERAL_RANGE", ephemeral)
    monkeypatch.setattr(mosquitto, "_RECENT_PORTS", deque(maxlen=8))
    picks = iter([31000, 32000])
    monkeypatch.setattr(random, "choice", lambda ports: (ports, next(picks))[1])
    sockets = _Sockets(taken={31000})
    monkeypatch.setattr(socket, "socket", sockets)
    assert mosquitto.free_port() == 32000
    assert sockets.tried == [31000, 32000]
    assert mosquitto._listening_ports() == range(28000, 40000)


# ---------------------------------------------------------------------- orphans

_PARENT = """
import sys
from pathlib import Path
from actimesh.broker.mosquitto import ManagedMosquitto
from actimesh.broker.mosquitto_conf import MosquittoConfig

broker = ManagedMosquitto(
    MosquittoConfig(data_dir=Path(sys.argv[1]), port=int(sys.argv[2]), insecure_anonymous=True)
)
broker.start()
print(broker.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Not our child, so once it exits init reaps it; until then it may be a zombie.
    status = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1]
    return status.startswith("Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_broker_dies_with_a_parent_killed_outright(tmp_path: Path) -> None:
    """SIGKILL runs no clean-up in the parent; the kernel still stops its broker."""
    with subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path), str(free_port())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as parent:
        try:
            assert parent.stdout is not None
            broker_pid = int(parent.stdout.readline())
            assert not _gone(broker_pid)
            parent.kill()
            parent.wait(timeout=TIMEOUT_S)
            eventually_sync(lambda: _gone(broker_pid), timeout=TIMEOUT_S)
        finally:
            parent.kill()
    # SIGTERM, not SIGKILL: the broker shut down cleanly and saved its database.
    log = (tmp_path / "mosquitto.log").read_text()
    assert "terminating" in log, log[-300:]
    assert "Saving in-memory database" in log, log[-300:]


@pytest.mark.time_limit(60)
async def test_a_broker_that_dies_by_itself_is_started_again_and_serves(
    fresh_mosquitto: ManagedMosquitto,
) -> None:
    # Mosquitto 2.0.11 has crashed after a reload: a crash must not leave the mesh silent.
    broker = fresh_mosquitto
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(broker.keep_running(poll_s=0.05), name="broker-watch")
        first = broker.pid
        assert first is not None
        os.kill(first, signal.SIGSEGV)
        await eventually(lambda: broker.restarts == 1 and broker.running, timeout=20)
        assert broker.pid != first
        async with aiomqtt.Client(broker.host, broker.port, timeout=10) as client:
            await client.publish("watch/ok", b"1", qos=1)
        # Stopped on purpose: not a crash, not started again.
        await broker.astop()
        await asyncio.sleep(0.2)  # an absence: four of the watchdog's polls see it stopped
        assert not broker.running
        assert broker.restarts == 1
        watch.cancel()


@pytest.mark.time_limit(60)
async def test_a_broker_that_keeps_dying_is_given_up_with_the_reason(
    fresh_mosquitto: ManagedMosquitto,
) -> None:
    broker = fresh_mosquitto

    async def crash_until_given_up() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(broker.keep_running(poll_s=0.05, max_restarts=1))
            for restarts in (1, 2):
                pid = broker.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                if restarts == 1:
                    await eventually(lambda: broker.restarts == 1 and broker.running, timeout=20)
            await asyncio.Event().wait()  # until the watchdog gives up: it raises

    with pytest.raises(ExceptionGroup) as caught:
        await crash_until_given_up()
    (error,) = caught.value.exceptions
    assert isinstance(error, BrokerError)
    assert "exited (signal 9) 2 times within 60 s" in str(error)
    assert broker.restarts == 1
