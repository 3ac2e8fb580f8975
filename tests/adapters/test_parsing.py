"""The device protocols' parsers on recorded samples, and on what they must refuse."""

from __future__ import annotations

import base64
import datetime as dt

import msgpack
import pytest

from actimesh.adapters import (
    Fix,
    NmeaAssembler,
    basic_credentials,
    nmea_checksum,
    owntracks_device,
    parse_osmand,
    parse_osmand_json,
    parse_owntracks,
    parse_sentence,
    telemetry_of,
)
from actimesh.adapters.nmea import Gga, Rmc
from actimesh.broker.codec import decode_telemetry
from actimesh.broker.messages import DeviceState
from actimesh.errors import PayloadError
from tests.adapters import samples

# ---------------------------------------------------------------------------- OwnTracks


def test_owntracks_samples_give_their_fix() -> None:
    fix = parse_owntracks(samples.OWNTRACKS_ANDROID)
    assert fix == Fix(ts=1489529135.0, lat=50.9326135, lon=6.9464344, acc=12.0, batt=92.0)
    ios = parse_owntracks(samples.OWNTRACKS_IOS)
    assert ios == Fix(ts=1564047365.0, lat=38.763523, lon=-9.093604, acc=10.0, batt=64.0)
    booklet = parse_owntracks(samples.OWNTRACKS_BOOKLET)
    assert booklet is not None
    assert (booklet.lat, booklet.lon, booklet.acc) == (48.85833, 2.29513, 65.0)


def test_owntracks_last_will_is_nothing_to_do() -> None:
    assert parse_owntracks(samples.OWNTRACKS_LWT) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (samples.OWNTRACKS_TRANSITION, "unsupported"),
        (b'{"_type":"encrypted","data":"c2VjcmV0"}', "unsupported"),
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"_type":"location","lat":"48.8","lon":2.2,"tst":1}', "invalid"),
        (b'{"_type":"location","lat":true,"lon":2.2,"tst":1}', "invalid"),
        (b'{"_type":"location","lat":91,"lon":2.2,"tst":1}', "invalid"),
        (b'{"_type":"location","lat":48.8,"lon":2.2}', "invalid"),
        (b'{"_type":"location","lat":48.8,"lon":2.2,"tst":1,"acc":-1}', "invalid"),
        (b'{"_type":"location","lat":1e999,"lon":2.2,"tst":1}', "invalid"),
        (
            b'{"_type":"location","lat":48.8,"lon":2.2,"tst":1,"x":"' + b"y" * 5000 + b'"}',
            "oversized",
        ),
    ],
)
def test_owntracks_refusals_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_owntracks(payload)
    assert caught.value.reason == reason


def test_owntracks_topic_names_the_device_by_its_user_level() -> None:
    assert owntracks_device(b"owntracks/bwc-7/pixel") == "bwc-7"
    for topic in (b"owntracks/bwc-7", b"owntracks/bwc-7/pixel/event", b"owntracks/a+b/x"):
        with pytest.raises(PayloadError, match="bad_topic"):
            owntracks_device(topic)


def test_a_fix_becomes_the_telemetry_a_device_would_send() -> None:
    payload = telemetry_of(Fix(ts=1_700_000_000.0, lat=51.0, lon=-114.0, acc=4.5, batt=80.0))
    assert decode_telemetry(payload) == (1_700_000_000.0, DeviceState.BUFFERING, 51.0, -114.0, 4.5)
    assert msgpack.unpackb(payload)["batt"] == 80.0


# ---------------------------------------------------------------------------- NMEA


@pytest.mark.parametrize(
    "line",
    [
        samples.NMEA_RMC,
        samples.NMEA_GGA,
        samples.UBLOX_RMC,
        samples.UBLOX_GGA,
        samples.GN_RMC,
        samples.GN_GGA,
        samples.NMEA_GSV,
    ],
)
def test_published_sentences_carry_their_real_checksums(line: bytes) -> None:
    body, _, given = line[1:].partition(b"*")
    assert nmea_checksum(body) == int(given, 16)


def test_rmc_and_gga_of_the_reference_pages() -> None:
    rmc = parse_sentence(samples.NMEA_RMC)
    assert isinstance(rmc, Rmc)
    assert rmc.date == dt.date(1994, 3, 23)
    assert rmc.time_s == 12 * 3600 + 35 * 60 + 19
    assert rmc.lat == pytest.approx(48 + 7.038 / 60)
    assert rmc.lon == pytest.approx(11 + 31.0 / 60)
    gga = parse_sentence(samples.NMEA_GGA)
    assert isinstance(gga, Gga)
    assert gga.hdop == 0.9
    assert (gga.lat, gga.lon) == (rmc.lat, rmc.lon)
    gn = parse_sentence(samples.GN_RMC)
    assert isinstance(gn, Rmc)
    assert gn.date == dt.date(2002, 12, 9)
    assert parse_sentence(samples.NMEA_GSV) is None


def test_southern_and_western_hemispheres_are_negative() -> None:
    body = b"GPRMC,000001,A,3351.000,S,15112.000,W,0,0,010124,,"
    line = b"$" + body + b"*" + f"{nmea_checksum(body):02X}".encode()
    rmc = parse_sentence(line)
    assert isinstance(rmc, Rmc)
    assert rmc.lat == pytest.approx(-(33 + 51 / 60))
    assert rmc.lon == pytest.approx(-(151 + 12 / 60))


def _signed(body: bytes) -> bytes:
    return b"$" + body + b"*" + f"{nmea_checksum(body):02X}".encode()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (samples.NMEA_RMC.replace(b"*6A", b"*6B"), "bad_checksum"),
        (samples.NMEA_RMC.replace(b"4807.038", b"4807.039"), "bad_checksum"),
        (samples.NMEA_RMC[: samples.NMEA_RMC.index(b"*")], "bad_checksum"),
        (b"GPRMC,123519,A*00", "malformed"),
        (b"$" + b"A" * 200, "oversized"),
        (_signed(b"GPRMC,123519,V,,,,,,,230394,,"), "no_fix"),
        (_signed(b"GPGGA,123519,4807.038,N,01131.000,E,0,00,,,M,,M,,"), "no_fix"),
        (_signed(b"GPRMC,123519,A,9107.038,N,01131.000,E,0,0,230394,,"), "invalid"),
        (_signed(b"GPRMC,123519,A,4867.038,N,01131.000,E,0,0,230394,,"), "invalid"),
        (_signed(b"GPRMC,253519,A,4807.038,N,01131.000,E,0,0,230394,,"), "invalid"),
        (_signed(b"GPRMC,123519,A,4807.038,N,01131.000,E,0,0,310294,,"), "invalid"),
        (_signed(b"GPRMC,123519,A,4807.038,X,01131.000,E,0,0,230394,,"), "invalid"),
        (_signed(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,nan,545.4,M,,M,,"), "invalid"),
        (_signed("GPRMC,123519,A,4807.038,N,01131.000,E,0,0,230394,\u00e9,".encode()), "malformed"),
    ],
)
def test_nmea_refusals_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_sentence(line)
    assert caught.value.reason == reason


def _day(date: dt.date) -> float:
    return dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()


def test_one_fix_per_epoch_with_date_from_rmc_and_accuracy_from_hdop() -> None:
    receiver_clock = _day(dt.date(1994, 3, 23)) + 12 * 3600 + 35 * 60 + 19.5
    nmea = NmeaAssembler(clock=lambda: receiver_clock)
    # GGA first: it has the HDOP, but no date is known yet (the clock's day is used).
    first = nmea.feed(samples.NMEA_GGA)
    assert first is not None
    assert first.acc == pytest.approx(0.9 * 5.0)
    assert first.ts == receiver_clock - 0.5
    # The RMC of another epoch brings the date; its accuracy is the last HDOP's.
    rmc = nmea.feed(_signed(samples.NMEA_RMC[1:-3].replace(b"123519", b"123520")))
    assert rmc is not None
    assert rmc.ts == _day(dt.date(1994, 3, 23)) + 12 * 3600 + 35 * 60 + 20
    assert rmc.acc == pytest.approx(4.5)
    # The same epoch's GGA gives no second fix.
    assert (
        nmea.feed(_signed(b"GPGGA,123520,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")) is None
    )
    assert nmea.feed(samples.NMEA_GSV) is None
    assert nmea.ignored == 1


def test_rmc_only_receivers_report_no_accuracy() -> None:
    fix = NmeaAssembler(clock=lambda: 0.0).feed(samples.UBLOX_RMC)
    assert fix is not None
    assert fix.acc is None
    assert fix.ts == _day(dt.date(2002, 12, 9)) + 8 * 3600 + 35 * 60 + 59


def test_a_gga_before_any_rmc_is_dated_by_the_clock_nearest_day() -> None:
    just_after_midnight = _day(dt.date(2026, 12, 7)) + 30.0
    nmea = NmeaAssembler(clock=lambda: just_after_midnight)
    fix = nmea.feed(_signed(b"GNGGA,235959.00,5102.682,N,11404.314,W,1,08,1.2,1045,M,,M,,"))
    assert fix is not None
    assert fix.ts == just_after_midnight - 31.0  # yesterday 23:59:59, not tomorrow's
    assert fix.lat == pytest.approx(51 + 2.682 / 60)
    assert fix.lon == pytest.approx(-(114 + 4.314 / 60))


# ---------------------------------------------------------------------------- OsmAnd


def test_osmand_query_of_traccar_client() -> None:
    params = {
        "id": "car-12",
        "timestamp": "1733500000",
        "lat": "51.0447",
        "lon": "-114.0719",
        "speed": "0.0",
        "bearing": "0.0",
        "altitude": "1045.0",
        "accuracy": "4.5",
        "batt": "87.0",
    }
    assert parse_osmand(params) == (
        "car-12",
        Fix(ts=1733500000.0, lat=51.0447, lon=-114.0719, acc=4.5, batt=87.0),
    )


def test_osmand_variants_milliseconds_iso_location_and_hdop() -> None:
    _, fix = parse_osmand({"location": "51.0,-114.0", "timestamp": "1733500000123", "hdop": "2"})
    assert (fix.lat, fix.lon, fix.ts, fix.acc) == (51.0, -114.0, 1733500000.123, 10.0)
    _, iso = parse_osmand({"lat": "1", "lon": "2", "timestamp": "2024-12-06 15:46:40"})
    assert iso.ts == dt.datetime(2024, 12, 6, 15, 46, 40, tzinfo=dt.UTC).timestamp()


def test_osmand_json_of_traccar_client() -> None:
    body = (
        b'{"location":{"timestamp":"2024-12-06T15:46:40.000Z","coords":{"latitude":51.0447,'
        b'"longitude":-114.0719,"accuracy":4.5,"speed":0,"heading":-1,"altitude":1045},'
        b'"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":0.87,'
        b'"is_charging":false},"activity":{"type":"still"}},"device_id":"car-12"}'
    )
    device_id, fix = parse_osmand_json(body)
    assert device_id == "car-12"
    assert fix.acc == 4.5
    assert fix.batt == pytest.approx(87.0)
    assert fix.ts == dt.datetime(2024, 12, 6, 15, 46, 40, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    "params",
    [
        {"lat": "51", "lon": "-114"},
        {"lat": "51", "lon": "-114", "timestamp": "yesterday"},
        {"lat": "91", "lon": "-114", "timestamp": "1"},
        {"lat": "nan", "lon": "-114", "timestamp": "1"},
        {"lon": "-114", "timestamp": "1"},
        {"lat": "51", "lon": "-114", "timestamp": "1", "accuracy": "-3"},
        {"location": "51", "timestamp": "1"},
    ],
)
def test_osmand_refuses_what_is_not_a_dated_position(params: dict[str, str]) -> None:
    with pytest.raises(PayloadError, match="invalid"):
        parse_osmand(params)


def test_basic_credentials() -> None:
    token = base64.b64encode(b"car-12:s3cret:with:colons").decode()
    assert basic_credentials(f"Basic {token}") == ("car-12", "s3cret:with:colons")
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!") is None
    assert basic_credentials(None) is None


# ---------------------------------------------------------------------------- found by fuzzing


def test_fuzzer_findings_are_refused_with_a_reason() -> None:
    huge = b'{"_type":"location","lat":1' + b"0" * 400 + b',"lon":2,"tst":1}'
    with pytest.raises(PayloadError, match="invalid"):
        parse_owntracks(huge)  # was OverflowError
    with pytest.raises(PayloadError, match="invalid"):
        parse_sentence(_signed(b"GPRMC,59.083559.00,A,4807.038,N,01131.000,E,0,0,230394,,"))
    with pytest.raises(PayloadError, match="invalid"):  # HDOP 1e308 x 5 m was infinite
        parse_osmand({"lat": "1", "lon": "2", "timestamp": "1", "hdop": "1e308"})
