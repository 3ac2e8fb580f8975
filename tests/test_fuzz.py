"""The fuzzer: a short run in every `make test`, and proof that each of its checks bites.

The full run is ``actimesh fuzz --count 1000000`` (docs/FUZZING.md); this one is the same
code on 20,000 cases, a few seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh import cli, fuzz
from actimesh.broker.codec import MAX_PAYLOAD_BYTES, REASONS, decode
from actimesh.broker.messages import Message
from actimesh.errors import PayloadError
from actimesh.fuzz import GENERATORS, INBOUND, CaseGenerator, FuzzReport, FuzzSettings, run_fuzz
from actimesh.triggers.intake import Intake
from actimesh.triggers.refusals import Refusals

SHORT = 20_000


def _run(tmp_path: Path, **changes: Any) -> FuzzReport:
    settings = FuzzSettings(**{"count": 400, "workdir": tmp_path, "settle_s": 5.0, **changes})
    return asyncio.run(run_fuzz(settings))


def _text(report: FuzzReport) -> str:
    return "\n".join(report.lines())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> FuzzReport:
    return _run(tmp_path_factory.mktemp("fuzz"), count=SHORT, seed=20, settle_s=60.0)


# ---------------------------------------------------------------------- the short run


def test_short_run_finds_nothing(short_run: FuzzReport) -> None:
    assert short_run.ok, _text(short_run)
    assert short_run.cases == SHORT
    assert set(short_run.generators) == set(GENERATORS)


def test_short_run_decodes_every_payload_as_every_inbound_model(short_run: FuzzReport) -> None:
    assert short_run.codec_cases == SHORT
    assert set(short_run.codec_outcomes) == {m.kind for m in INBOUND}
    for outcomes in short_run.codec_outcomes.values():
        assert sum(outcomes.values()) == SHORT
        assert set(outcomes) <= REASONS | {"ok"}
        assert set(outcomes) >= REASONS  # every kind of rejection happened
        assert outcomes["ok"] > 100  # and the valid paths were reached too


def test_short_run_counts_every_rejection(short_run: FuzzReport) -> None:
    intake = short_run.intake
    assert intake is not None
    assert intake.cases == SHORT
    assert short_run.engine_rejected == dict(intake.rejected)
    assert short_run.deadletters == dict(intake.rejected)
    accepted = sum(intake.accepted.values())
    assert accepted + intake.ignored + intake.rejected.total() == SHORT
    for reason in (
        "bad_topic",
        "malformed",
        "invalid",
        "oversized",
        "bad_version",
        "future",
        "too_old",
        "unknown_event_type",
    ):
        assert intake.rejected[reason] > 0, reason
    assert set(intake.accepted) == {"telemetry", "event", "presence", "ack"}


def test_short_run_leaves_the_engine_bounded_and_working(short_run: FuzzReport) -> None:
    assert short_run.final["ok"]
    assert len(short_run.final["commanded"]) == 5
    assert short_run.structures["fleet"] == len(fuzz.POOL)
    assert short_run.structures["held"] == 0
    assert short_run.memory_growth < short_run.settings.growth_limit_bytes


def test_report_reads_as_lines_and_json(short_run: FuzzReport) -> None:
    text = _text(short_run)
    assert "findings: none" in text
    assert "final taser draw: activated" in text
    data = json.loads(json.dumps(short_run.to_json()))
    assert data["ok"] is True
    assert data["cases"] == SHORT
    assert data["codec"]["payloads_per_s"] > 0
    assert data["intake"]["inputs_per_s"] > 0
    assert data["intake"]["engine_stats_rejected"] == data["intake"]["rejected"]
    assert data["memory"]["peak_bytes"] > 0
    assert data["protocols"]["inputs"] == SHORT


def test_short_run_feeds_every_protocol_parser_good_and_hostile_input(
    short_run: FuzzReport,
) -> None:
    assert short_run.protocol_cases == SHORT
    assert set(short_run.protocol_outcomes) == set(fuzz.PARSERS)
    for parser, outcomes in short_run.protocol_outcomes.items():
        assert outcomes["ok"] > 100, parser  # the valid paths were reached
        assert set(outcomes) <= fuzz.PROTOCOL_REASONS | {"ok", "none"}, parser
        assert sum(outcomes.values()) - outcomes["ok"] - outcomes["none"] > 100, parser
    nmea = short_run.protocol_outcomes["nmea"]
    assert nmea["bad_checksum"] > 0
    assert nmea["invalid"] > 0  # re-signed sentences reach the field checks
    assert short_run.protocol_outcomes["owntracks"]["unsupported"] > 0
    assert "protocols:" in _text(short_run)


# ---------------------------------------------------------------------- generation


def test_cases_depend_only_on_seed_and_index() -> None:
    a, b = CaseGenerator(5), CaseGenerator(5)
    forward = [a.case(i) for i in range(200)]
    backward = [b.case(i) for i in reversed(range(200))][::-1]
    assert forward == backward
    assert [c.payload for c in forward] != [CaseGenerator(6).case(i).payload for i in range(200)]


def _cases(n: int, seed: int = 1) -> Iterator[fuzz.Case]:
    generator = CaseGenerator(seed)
    return (generator.case(i) for i in range(n))


def test_generators_make_each_class_of_hostile_input() -> None:
    payloads: dict[str, list[bytes]] = {name: [] for name in GENERATORS}
    topics: set[bytes] = set()
    for case in _cases(6000):
        payloads[case.generator].append(case.payload)
        topics.add(case.topic)
    sizes = [len(p) for p in payloads["random_bytes"]]
    assert 0 in sizes
    assert max(sizes) > MAX_PAYLOAD_BYTES
    assert any(b"\x81\xa1k" * 5000 in p for p in payloads["deep_nesting"])
    assert any(len(p) > 30_000 for p in payloads["deep_nesting"])  # 10,000 maps deep
    assert any(b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff" in p for p in payloads["big_int"])
    assert any(b"\xd6\xff" in p or b"\xd7\xff" in p for p in payloads["ext"])  # timestamps
    assert any(b"\xcb\x7f\xf8" in p for p in payloads["non_finite"])  # NaN
    assert any(b"\xc0\xaf" in p for p in payloads["invalid_utf8"])
    assert any(not p or p[0] & 0xF0 != 0x80 for p in payloads["non_map"])
    assert any(t.startswith(b"am/v1/other/") for t in topics)
    assert any(b"\xff" in t for t in topics)  # invalid UTF-8 in a telemetry topic


def test_duplicate_keys_repeat_a_key() -> None:
    for case in _cases(3000):
        if case.generator == "duplicate_key":
            raw = msgpack.unpackb(case.payload, object_pairs_hook=list, strict_map_key=False)
            keys = [k for k, _ in raw]
            assert len(keys) != len(set(keys))


# ---------------------------------------------------------------------- the checks bite


def test_a_codec_crash_is_a_finding_with_its_reproducer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode

    def flaky(model: type[Message], payload: bytes, **kw: Any) -> Any:
        if len(payload) > MAX_PAYLOAD_BYTES:  # as if the size check were missing
            raise IndexError("boom")
        return real(model, payload, **kw)

    monkeypatch.setattr("actimesh.fuzz._codec.decode", flaky)
    report = _run(tmp_path, count=3000, target="codec", seed=3)
    crashes = [f for f in report.findings if f.problem == "crash"]
    assert crashes, _text(report)
    first = crashes[0]
    assert "IndexError: boom" in first.detail
    assert first.index is not None
    assert bytes.fromhex(first.payload_hex) == CaseGenerator(3).case(first.index).payload
    assert f"--seed 3 --replay {first.index}" in first.line(3)
    assert not report.ok


def test_a_bad_error_reason_or_text_is_a_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode

    def unruly(model: type[Message], payload: bytes, **kw: Any) -> Any:
        try:
            return real(model, payload, **kw)
        except PayloadError as exc:
            raise PayloadError("weird", "two\nlines") from exc

    monkeypatch.setattr("actimesh.fuzz._codec.decode", unruly)
    report = _run(tmp_path, count=50, target="codec")
    details = {f.detail for f in report.findings if f.problem == "bad_error"}
    assert any("reason 'weird'" in d for d in details)


def test_a_protocol_parser_crash_is_a_finding_with_its_reproducer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fragile(payload: bytes) -> Any:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr("actimesh.fuzz._protocols.parse_owntracks", fragile)
    report = _run(tmp_path, count=200, target="protocols", seed=4)
    crashes = [f for f in report.findings if f.problem == "crash"]
    assert crashes, _text(report)
    first = crashes[0]
    assert first.model == "owntracks"
    assert "OverflowError" in first.detail
    assert first.index is not None
    assert bytes.fromhex(first.payload_hex) == fuzz.protocol_case(4, first.index)[2]
    assert f"--seed 4 --replay {first.index}" in first.line(4)


def test_a_fix_out_of_range_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actimesh.adapters import Fix  # noqa: PLC0415 - only here

    monkeypatch.setattr(
        "actimesh.fuzz._protocols.parse_osmand",
        lambda params: (None, Fix(ts=1.0, lat=91.0, lon=0.0)),
    )
    report = _run(tmp_path, count=200, target="protocols")
    assert {f.problem for f in report.findings} == {"bad_fix"}


def test_an_engine_crash_and_the_unacknowledged_message_are_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Intake, device_id: str, payload: bytes) -> None:
        raise KeyError(device_id)

    monkeypatch.setattr(Intake, "_on_ack", broken)
    report = _run(tmp_path, count=300, target="intake", settle_s=1.0)
    problems = {f.problem for f in report.findings}
    assert {"crash", "unacknowledged", "hang"} <= problems, _text(report)
    crash = next(f for f in report.findings if f.problem == "crash")
    assert "KeyError" in crash.detail
    assert crash.topic is not None
    assert crash.topic.endswith("/ack")


def test_an_uncounted_rejection_is_a_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Refusals.reject

    def forgetful(self: Refusals, topic: str, payload: bytes, exc: PayloadError) -> None:
        if exc.reason != "too_old":
            real(self, topic, payload, exc)

    monkeypatch.setattr(Refusals, "reject", forgetful)
    report = _run(tmp_path, count=2000, target="intake")
    mismatches = [f for f in report.findings if f.problem == "mismatch"]
    assert mismatches, _text(report)
    assert all("too_old" in f.detail for f in mismatches)


def test_memory_growth_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[bytes] = []
    real = fuzz._Outputs.__call__

    def hoarding(self: Any, topic: str, payload: bytes) -> None:
        kept.append(payload + bytes(512))  # everything published, and then some, forever
        real(self, topic, payload)

    monkeypatch.setattr(fuzz._Outputs, "__call__", hoarding)
    report = _run(
        tmp_path,
        count=4000,
        target="intake",
        tracemalloc=True,
        warmup=1000,
        growth_limit_bytes=256 * 1024,
    )
    assert report.memory_method == "tracemalloc"
    assert [f.problem for f in report.findings] == ["growth"], _text(report)


def test_replay_runs_the_one_case(tmp_path: Path) -> None:
    report = _run(tmp_path, replay=123, seed=9)
    assert report.cases == 1
    assert report.replayed == CaseGenerator(9).case(123)
    assert "case 123:" in _text(report)


# ---------------------------------------------------------------------- hypothesis

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(sorted({f for m in INBOUND for f in m.model_fields} | {"x", ""}))


@given(st.dictionaries(field_names, msgpack_values, max_size=12), st.sampled_from([1, 1, 2]))
def test_hypothesis_maps_meet_the_codec_contract(fields: dict[str, Any], version: int) -> None:
    payload = msgpack.packb({**fields, "v": version}, use_bin_type=True)
    assert fuzz.check_codec(payload)[1] == []


@given(st.binary(max_size=300))
def test_hypothesis_bytes_meet_the_codec_contract(payload: bytes) -> None:
    assert fuzz.check_codec(payload)[1] == []


# ---------------------------------------------------------------------- command line


def test_cli_fuzz_writes_the_json_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fuzz.json"
    code = cli.main(
        ["fuzz", "--count", "500", "--seed", "4", "--target", "codec", "--json", str(out)]
    )
    assert code == cli.EXIT_OK
    assert "findings: none" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["ok"] is True
    assert data["seed"] == 4
    assert "intake" not in data


def test_cli_fuzz_fails_on_a_finding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crashing(payload: bytes) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr("actimesh.fuzz._codec.decode_telemetry", crashing)
    assert cli.main(["fuzz", "--count", "20", "--target", "codec"]) == cli.EXIT_FAILED
    assert "codec: crash: decode_telemetry: ZeroDivisionError" in capsys.readouterr().out


def test_cli_fuzz_refuses_an_unwritable_report_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "r.json"
    code = cli.main(["fuzz", "--count", "5", "--target", "codec", "--json", str(missing)])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot write the report" in err
