"""Every example in README.md, CONTRIBUTING.md and docs/*.md runs as written against a
live demo.

``actimesh up --sim`` (what ``make demo`` runs) starts in a network namespace of its own
(``ip netns``: the test runs as root, as ``make test`` does), so it listens on the
documented default addresses (broker 127.0.0.1:1883, dispatch 127.0.0.1:8080, evidence
127.0.0.1:8471) without meeting anything else on this machine, and each example runs
byte for byte, in that namespace, from the demo's working directory (its data
directory is the default ``actimesh-data``). ``actimesh`` on the examples' PATH is this
checkout's command. A document whose examples start their own ``actimesh up`` (marked
``<!-- examples: own actimesh up -->``) runs instead in an empty folder of a namespace
of its own, without the demo. Whatever a document's examples leave running in their
namespace is stopped when the document ends. How each block is marked, and what is
checked, is in tests/doc_examples.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from actimesh.errors import ConfigError
from actimesh.runtime.config import load_settings
from tests.doc_examples import DOCUMENTS, Example, How, examples, parse, starts_own_up
from tests.waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[1]
#: One example's time limit (the slowest, `actimesh users add` hashing with scrypt and
#: the certificate commands, take a few seconds each on the 2-core machine).
EXAMPLE_LIMIT_S = 60.0
#: How long a stream has to show what its marker expects.
STREAM_LIMIT_S = 30.0
#: The demo's fleet: `make demo` runs 24 crews; 4 exercise the same paths for less CPU.
DEMO_ARGS = ("up", "--sim", "4", "--seed", "16")
DISPATCH = "http://127.0.0.1:8080"
_BANNER_READY = re.compile(r"^\s*dispatch http://127\.0\.0\.1:8080\b")
#: How long the demo has to stop on SIGINT, and what a document left running on SIGTERM
#: (`up` stops its broker and its web children in about 1 s). Longer is a bug of `up`'s
#: shutdown, reported as one: SIGKILL only cleans up after the failure.
STOP_LIMIT_S = 10.0


# --------------------------------------------------------------- the markers, everywhere
def test_every_shell_and_python_block_is_marked() -> None:
    counts = dict.fromkeys(How, 0)
    for path in DOCUMENTS:
        for example in examples(path):  # raises on an unmarked block
            counts[example.how] += 1
    assert counts[How.RUN] >= 10, counts
    assert counts[How.STREAM] >= 2, counts


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("```sh\nls\n```\n", "without a marker"),
        ("<!-- example: run -->\n\nsome words\n```sh\nls\n```\n", "marker without a block"),
        ("<!-- example: illustrative: -->\n```sh\nls\n```\n", "is not `run`"),
        ("<!-- example: maybe -->\n```python\npass\n```\n", "is not `run`"),
        ("<!-- example: run -->\n```toml\na = 1\n```\n", "language 'toml'"),
        ("<!-- example: run -->\n```sh\nls\n", "never closed"),
    ],
)
def test_a_missing_or_wrong_marker_is_an_error(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse(Path("DOC.md"), text)


def test_markers_are_read() -> None:
    text = (
        "<!-- example: run -->\n```sh\nls\n```\n\n"
        "<!-- example: stream until /event: \\w+/ -->\n```sh\ncurl -N x\n```\n"
        "<!-- example: illustrative: runs for minutes -->\n```python\nrun()\n```\n"
        "```\nplain output needs no marker\n```\n"
    )
    found = parse(Path("DOC.md"), text)
    assert [(e.line, e.how, e.detail, e.text) for e in found] == [
        (2, How.RUN, "", "ls\n"),
        (7, How.STREAM, "event: \\w+", "curl -N x\n"),
        (11, How.ILLUSTRATIVE, "runs for minutes", "run()\n"),
    ]


def test_every_settings_example_is_a_valid_settings_file(tmp_path: Path) -> None:
    # The TOML examples are not commands, but they are copied as they are: each one
    # must load, with every key known and every value accepted.
    fence = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)
    loaded = 0
    for path in DOCUMENTS:
        for n, block in enumerate(fence.findall(path.read_text(encoding="utf-8"))):
            config = tmp_path / f"{path.stem}-{n}.toml"
            config.write_text(block, encoding="utf-8")
            try:
                load_settings(config)
            except ConfigError as exc:
                pytest.fail(f"{path.name}, TOML example {n + 1}: {exc}")
            loaded += 1
    assert loaded >= 5


# ---------------------------------------------------------------------- the live demo
@dataclass
class Place:
    """Network namespace ``netns``, where examples run from ``workdir``."""

    netns: str
    workdir: Path
    env: dict[str, str]

    def run(self, argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` in the namespace, from ``workdir``, within the time limit."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=EXAMPLE_LIMIT_S,
            check=False,
        )

    def start(self, argv: list[str]) -> subprocess.Popen[str]:
        """``argv`` in the namespace, from ``workdir``, in a session of its own, its
        output and errors in one text pipe."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )


@dataclass
class Demo(Place):
    """``actimesh up`` in the place's namespace, run from its ``workdir``."""

    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    token: str = ""
    calls: Iterator[int] = field(default_factory=itertools.count)

    def activate(self) -> str:
        """A dispatcher zone over the API (what the test does to make activations
        happen while a stream runs); returns the activation id."""
        done = self.run(
            [
                "curl",
                "-fsS",
                "-X",
                "POST",
                f"{DISPATCH}/api/v1/zones",
                "-H",
                f"Authorization: Bearer {self.token}",
                "-H",
                "content-type: application/json",
                "-d",
                json.dumps(
                    {
                        "lat": 51.0447,
                        "lon": -114.0719,
                        "radius_m": 50,
                        "call_id": f"DOCTEST-{next(self.calls)}",
                    }
                ),
            ]
        )
        assert done.returncode == 0, done.stderr
        aid: str = json.loads(done.stdout)["aid"]
        return aid


def _ip() -> str:
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    assert ip is not None, "the `ip` command (iproute2) is needed to give the demo its own network"
    assert os.geteuid() == 0, "the doc examples run the demo in a network namespace: run as root"
    return ip


def _reader(stream: IO[str], sink: list[str]) -> None:
    with stream:
        sink.extend(stream)


def _in_namespace(ip: str, netns: str) -> list[int]:
    """The processes in namespace ``netns``."""
    listed = subprocess.run(
        [ip, "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False
    )
    return [int(pid) for pid in listed.stdout.split()]


def _stop_leftovers(ip: str, netns: str) -> None:
    """Stop what the examples left running in ``netns`` (it is theirs alone): SIGTERM, so
    an ``actimesh up`` stops its broker as Ctrl-C would; what is still there after
    :data:`STOP_LIMIT_S` is SIGKILLed, and the test fails."""

    def signal_all(sig: signal.Signals) -> None:
        for pid in _in_namespace(ip, netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def gone() -> bool:
        return not _in_namespace(ip, netns)

    signal_all(signal.SIGTERM)
    try:
        eventually_sync(gone, timeout=STOP_LIMIT_S, every=0.1)
    except TimeoutError:
        left = {pid: _cmdline(pid) for pid in _in_namespace(ip, netns)}
        signal_all(signal.SIGKILL)
        eventually_sync(gone, timeout=10, every=0.1)
        pytest.fail(f"still running {STOP_LIMIT_S:g} s after SIGTERM: {left}")


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return "?"


@contextlib.contextmanager
def _place(workdir: Path) -> Iterator[Place]:
    """A network namespace of its own with loopback up, an ``actimesh`` on the PATH and a
    home in ``workdir``; on leaving, nothing runs in it any more and it is gone."""
    ip = _ip()
    netns = f"amdoc-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        [ip, "netns", "add", netns], capture_output=True, text=True, timeout=10, check=False
    )
    assert made.returncode == 0, (
        f"`ip netns add` failed ({made.stderr.strip()}): the doc examples need a network "
        "namespace (root, and CAP_SYS_ADMIN in a container)"
    )
    try:
        subprocess.run(
            [ip, "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True, timeout=10
        )
        yield Place(netns, workdir, _environment(workdir))
    finally:
        try:
            _stop_leftovers(ip, netns)
        finally:
            subprocess.run([ip, "netns", "delete", netns], check=False, timeout=10)


def _environment(workdir: Path) -> dict[str, str]:
    bindir = workdir / ".bin"
    bindir.mkdir()
    wrapper = bindir / "actimesh"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m actimesh "$@"\n')
    wrapper.chmod(0o755)
    (workdir / ".home").mkdir()
    return {
        "PATH": f"{bindir}:{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:"
        "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(workdir / ".home"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT / "src"),
        "COLUMNS": "200",
        "TERM": "dumb",
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with _place(tmp_path_factory.mktemp("demo")) as place:
        yield from _demo_in(place)


def _demo_in(place: Place) -> Iterator[Demo]:
    process: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None
    output: list[str] = []
    try:
        process = place.start(["actimesh", *DEMO_ARGS])
        demo = Demo(place.netns, place.workdir, place.env, process, output)
        reader = threading.Thread(target=_reader, args=(process.stdout, demo.output), daemon=True)
        reader.start()

        def ready() -> bool:
            assert process is not None
            if process.poll() is not None:
                raise AssertionError("actimesh up stopped:\n" + "".join(demo.output))
            return any(_BANNER_READY.match(line) for line in demo.output)

        eventually_sync(ready, timeout=60, every=0.1)
        made = demo.run(["actimesh", "tokens", "create", "--name", "doctest", "--role", "admin"])
        assert made.returncode == 0, made.stderr
        demo.token = made.stdout.split("token: ", 1)[1].split()[0]
        # An activation exists before any example asks for one.
        demo.activate()
        yield demo
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as the README says
            try:
                process.wait(timeout=STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                stopped = False
            else:
                stopped = True
            if reader is not None:
                reader.join(timeout=10)
            if not stopped:
                pytest.fail(
                    f"actimesh up still ran {STOP_LIMIT_S:g} s after SIGINT (then SIGKILLed); "
                    "its last lines:\n" + "".join(output[-40:])
                )


# ------------------------------------------------------------------- running examples
_SAVE_STATE = """
for __v in $(compgen -v); do
  case " $__base " in *" $__v "*) ;; *) declare -p "$__v" ;; esac
done > "$__state" 2>/dev/null || true
"""


def _shell_script(example: Example, state: Path) -> str:
    """``example`` as written, in a session: what earlier blocks of its document set is
    there, and what it sets is kept for the next one."""
    return (
        f"__state={state}\n__base=\"$(compgen -v | tr '\\n' ' ')\"\n"
        f'[ -f "$__state" ] && source "$__state"\n'
        "set -euo pipefail\n"
        f"{example.text}"
        f"{_SAVE_STATE}"
    )


def _argv(example: Example, state: Path) -> list[str]:
    if example.is_shell:
        return ["bash", "--noprofile", "--norc", "-c", _shell_script(example, state)]
    return [sys.executable, "-c", example.text]


def _run(place: Place, example: Example, state: Path) -> None:
    done = place.run(_argv(example, state))
    assert done.returncode == 0, (
        f"{example.where} failed (exit {done.returncode}):\n{example.text}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


def _stream(
    place: Place, example: Example, state: Path, activate: Callable[[], object] | None
) -> None:
    pattern = re.compile(example.detail)
    out: list[str] = []
    process = place.start(_argv(example, state))
    assert process.stdout is not None
    reader = threading.Thread(target=_reader, args=(process.stdout, out), daemon=True)
    reader.start()
    try:

        def shown() -> bool:
            # A stream that ended on its own was refused (or crashed): say what it said.
            if process.poll() is not None:
                raise AssertionError(
                    f"{example.where} ended (exit {process.returncode}) before showing "
                    f"/{example.detail}/:\n{example.text}\n{''.join(out)[-3000:]}"
                )
            if any(pattern.search(line) for line in out):
                return True
            if activate is not None:
                activate()  # until the stream, once subscribed, sees one
            return False

        eventually_sync(shown, timeout=STREAM_LIMIT_S, every=0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        reader.join(timeout=10)


def _run_all(place: Place, path: Path, state: Path, activate: Callable[[], object] | None) -> int:
    """Run the document's examples in order in ``place``; how many ran."""
    ran = 0
    for example in examples(path):
        if example.how is How.RUN:
            _run(place, example, state)
        elif example.how is How.STREAM:
            _stream(place, example, state, activate)
        else:
            continue
        ran += 1
    return ran


_LIVE = [p for p in DOCUMENTS if any(e.how is not How.ILLUSTRATIVE for e in examples(p))]
_WITH_DEMO = [p for p in _LIVE if not starts_own_up(p)]
_OWN_UP = [p for p in _LIVE if starts_own_up(p)]


@pytest.mark.time_limit(420)
@pytest.mark.parametrize("path", _WITH_DEMO, ids=[p.name for p in _WITH_DEMO])
def test_the_examples_run_as_written(demo: Demo, path: Path, tmp_path: Path) -> None:
    assert _run_all(demo, path, tmp_path / "session.sh", demo.activate) > 0
    assert demo.process is not None
    assert demo.process.poll() is None, "the demo stopped:\n" + "".join(demo.output[-50:])


@pytest.mark.time_limit(420)
@pytest.mark.parametrize("path", _OWN_UP, ids=[p.name for p in _OWN_UP])
def test_the_examples_that_start_their_own_up_run_as_written(
    path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # An empty folder, as such a document says, and a namespace where nothing listens.
    workdir = tmp_path_factory.mktemp(path.stem)
    state = tmp_path_factory.mktemp(f"{path.stem}-session") / "session.sh"
    with _place(workdir) as place:
        assert _run_all(place, path, state, None) > 0


def test_a_document_that_starts_its_own_up_is_run_without_the_demo() -> None:
    # The check above exists for at least one document, and the demo's documents do not
    # include it (its `up` would meet the demo's on the default ports).
    assert _OWN_UP, "no document starts its own `actimesh up`"
    assert not set(_OWN_UP) & set(_WITH_DEMO)
