"""The topic scheme: build and parse agree, bad ids never reach a topic, filters match."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.topics import (
    IDENTIFIER_PATTERN,
    SCHEME_VERSION,
    DeviceChannel,
    DeviceTopic,
    Topics,
    device_client_id,
    is_identifier,
    mqtt_client_id,
)

BAD_IDS = [
    "",
    "-leading-dash",
    ".hidden",
    "_under",
    "has space",
    "a/b",
    "+",
    "#",
    "bc+1",
    "bc#1",
    "x" * 65,
    "é",
    "a\x00b",
    "line\n",
]


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    for i, want in enumerate(filter_levels):
        if want == "#":
            return True
        if i >= len(levels) or (want not in ("+", levels[i])):
            return False
    return len(levels) == len(filter_levels)


def test_topics_start_with_scheme_version_and_agency() -> None:
    topics = Topics("metro")
    assert SCHEME_VERSION == "v1"
    assert topics.prefix == "am/v1/metro"
    assert topics.telemetry("bc-1") == "am/v1/metro/dev/bc-1/telemetry"
    assert topics.event("cew-7") == "am/v1/metro/dev/cew-7/event"
    assert topics.presence("bc-1") == "am/v1/metro/dev/bc-1/presence"
    assert topics.command("bc-1") == "am/v1/metro/dev/bc-1/cmd"
    assert topics.ack("bc-1") == "am/v1/metro/dev/bc-1/ack"
    assert topics.activations("taser_draw") == "am/v1/metro/activations/taser_draw"
    assert topics.deadletter("too_old") == "am/v1/metro/deadletter/too_old"
    assert topics.engine_status("engine-1") == "am/v1/metro/engine/engine-1/status"


@pytest.mark.parametrize("channel", list(DeviceChannel))
def test_device_topic_parses_back(channel: DeviceChannel) -> None:
    topics = Topics("metro")
    topic = topics.device("car-17.dash_2", channel)
    assert topics.parse_device(topic) == DeviceTopic("car-17.dash_2", channel)


@given(
    agency=st.from_regex(IDENTIFIER_PATTERN, fullmatch=True),
    device=st.from_regex(IDENTIFIER_PATTERN, fullmatch=True),
    channel=st.sampled_from(DeviceChannel),
)
def test_any_device_topic_round_trips(agency: str, device: str, channel: DeviceChannel) -> None:
    topics = Topics(agency)
    assert topics.parse_device(topics.device(device, channel)) == DeviceTopic(device, channel)


@pytest.mark.parametrize(
    "topic",
    [
        "am/v1/other/dev/bc-1/telemetry",  # another agency
        "am/v2/metro/dev/bc-1/telemetry",  # another scheme
        "am/v1/metro/dev/bc-1/unknown",
        "am/v1/metro/dev/bc-1",
        "am/v1/metro/dev/bc-1/telemetry/extra",
        "am/v1/metro/dev//telemetry",
        "am/v1/metro/dev/+/telemetry",
        "am/v1/metro/dev/-x/telemetry",
        "am/v1/metro/activations/taser_draw",
        "am/v1/metro/engine/engine-1/status",
        "am/v1/metro/dev/bc-1/TELEMETRY",
        "",
    ],
)
def test_other_topics_do_not_parse_as_device_topics(topic: str) -> None:
    assert Topics("metro").parse_device(topic) is None


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_are_rejected(bad: str) -> None:
    assert not is_identifier(bad)
    with pytest.raises(ValueError, match="must match"):
        Topics(bad)
    topics = Topics("metro")
    with pytest.raises(ValueError, match="device id"):
        topics.telemetry(bad)
    with pytest.raises(ValueError, match="device id"):
        topics.device(bad, DeviceChannel.COMMAND)
    with pytest.raises(ValueError, match="engine id"):
        topics.engine_status(bad)


@pytest.mark.parametrize("good", ["a", "A9", "bc-0042", "car_17.dash", "x" * 64])
def test_valid_ids_are_accepted(good: str) -> None:
    assert is_identifier(good)
    assert Topics(good).agency == good


@pytest.mark.parametrize("channel", list(DeviceChannel))
def test_wildcard_filter_covers_one_channel_of_every_device(channel: DeviceChannel) -> None:
    topics = Topics("metro")
    topic_filter = topics.all_devices(channel)
    assert topic_filter == f"am/v1/metro/dev/+/{channel.value}"
    assert _matches(topic_filter, topics.device("bc-1", channel))
    assert _matches(topic_filter, topics.device("car-17-dash", channel))
    for other in DeviceChannel:
        if other is not channel:
            assert not _matches(topic_filter, topics.device("bc-1", other))
    assert not _matches(topic_filter, Topics("other").device("bc-1", channel))


def test_fleet_wide_filters_cover_their_subtree_only() -> None:
    topics = Topics("metro")
    assert topics.all_activations == "am/v1/metro/activations/#"
    assert topics.all_deadletters == "am/v1/metro/deadletter/#"
    assert _matches(topics.all_activations, topics.activations("collision"))
    assert not _matches(topics.all_activations, topics.deadletter("too_old"))
    assert _matches(topics.all_deadletters, topics.deadletter("too_old"))
    assert not _matches(topics.all_deadletters, Topics("other").deadletter("too_old"))


def test_one_agency_never_sees_another() -> None:
    ours, theirs = Topics("metro"), Topics("county")
    for channel in DeviceChannel:
        assert not _matches(ours.all_devices(channel), theirs.device("bc-1", channel))
    assert not _matches(ours.all_activations, theirs.activations("taser_draw"))


def test_a_dot_in_a_client_id_is_written_as_a_tilde() -> None:
    # NATS refuses a client id with a dot; Mosquitto takes either.
    assert device_client_id("demo", "cam.7") == "demo-cam~7"
    assert device_client_id("city.pd", "bwc1") == "city~pd-bwc1"
    assert device_client_id("demo", "bwc1") == "demo-bwc1"  # ids without a dot keep theirs
    assert mqtt_client_id("city.pd-dispatch-console-1-ctl") == "city~pd-dispatch-console-1-ctl"


@given(
    agency=st.from_regex(IDENTIFIER_PATTERN, fullmatch=True),
    a=st.from_regex(IDENTIFIER_PATTERN, fullmatch=True),
    b=st.from_regex(IDENTIFIER_PATTERN, fullmatch=True),
)
def test_device_client_ids_stay_unique_bounded_and_dotless(agency: str, a: str, b: str) -> None:
    ca, cb = device_client_id(agency, a), device_client_id(agency, b)
    assert (ca == cb) == (a == b)
    assert "." not in ca
    assert len(ca) == len(agency) + 1 + len(a)  # never longer than the name it stands for
