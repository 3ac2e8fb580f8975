"""Ledger queries, read-only beside the engine's writer: filters, areas, outcomes.

Each test that reads a ledger runs on both stores (a SQLite file, an agency's schema in
PostgreSQL): the REST answers must be the same."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.messages import DeviceKind
from actimesh.dispatch.models import ActivationSummary, Outcome
from actimesh.dispatch.queries import (
    SUMMARY_FIELDS,
    ActivationQuery,
    BBox,
    LedgerQueries,
    LedgerReader,
    Near,
    open_reader,
)
from actimesh.errors import LedgerError
from actimesh.geofence import destination, distance_m
from actimesh.ledger import AckRow, ActivationRow, DecisionRow, open_ledger

T0 = 1_800_000_000.0


def row(
    aid: str,
    ts: float,
    lat: float | None,
    lon: float | None,
    type_: str = "taser_draw",
    src: str = "cew",
    by: str | None = None,
) -> ActivationRow:
    return ActivationRow(
        aid=aid,
        src=src,
        eid=f"e-{aid}",
        type=type_,
        event_ts=ts,
        received_ts=ts + 0.001,
        decided_ts=ts + 0.002,
        lat=lat,
        lon=lon,
        acc=3.0,
        position_source="event" if lat is not None else "none",
        radius_m=9.144,
        pre_roll_s=30.0,
        rule={"event_type": type_},
        initiated_by=by,
        engine="engine-1",
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path, agency: str) -> Path | str:
    """The same activations in each store: its location (for ``agency``)."""
    location: Path | str = tmp_path / "ledger.sqlite3"
    if request.param == "postgres":
        location = str(request.getfixturevalue("postgres_url"))
    async with open_ledger(location, agency=agency) as w:
        await w.record_activation(
            row("act-a", T0, 51.0447, -114.0719),
            [
                DecisionRow("bwc-own", "body_cam", True, "paired", 0.5),
                DecisionRow("bwc-near", "body_cam", True, "proximity", 8.0, 3.0, 0.4, 2.0),
                DecisionRow("bwc-quiet", "body_cam", True, "proximity", 5.0, 3.0, 0.4, 2.0),
                DecisionRow("bwc-slow", "body_cam", True, "proximity", 6.0, 3.0, 0.4, 2.0),
                DecisionRow("bwc-far", "body_cam", False, "too_far", 14.0, 3.0, 0.4, 2.0),
                DecisionRow("gw-x", None, True, "paired"),
            ],
        )
        for device, status, ts in (
            ("bwc-own", "recording", T0 + 0.05),
            ("bwc-near", "received", T0 + 0.01),
            ("bwc-near", "recording", T0 + 0.2),
            ("bwc-slow", "received", T0 + 0.03),
        ):
            rec = "rec-1" if status == "recording" else None
            await w.record_ack(AckRow("act-a", device, status, 30.0, rec, ts, ts + 0.001))
        # Either side of the 180th meridian (Taveuni, Fiji), 2 m apart.
        lat, lon = -16.8, 179.99999
        lat2, lon2 = destination(lat, lon, 90.0, 2.0)
        await w.record_activation(
            row("act-b", T0 + 10, lat, lon, "collision", "gw-f"),
            [DecisionRow("dash-f", "dash_cam", True, "paired")],
        )
        await w.record_activation(
            row("act-c", T0 + 20, lat2, lon2, "dispatch_zone", "dispatch-c", by="Kim"), []
        )
        await w.record_activation(row("act-d", T0 + 30, None, None, "collision", "gw-2"), [])
    return location


@pytest.fixture
def reader(ledger: Path | str, agency: str) -> LedgerQueries:
    """The dispatch's reader of ``ledger``, not open yet."""
    return open_reader(ledger, agency=agency)


async def test_filters_and_paging(reader: LedgerQueries) -> None:
    async with reader as r:

        async def aids(**kw: object) -> list[str]:
            return [a.aid for a in await r.search(ActivationQuery(**kw))]  # type: ignore[arg-type]

        assert await aids() == ["act-d", "act-c", "act-b", "act-a"]
        assert await aids(types=("collision",)) == ["act-d", "act-b"]
        assert await aids(since=T0 + 10, until=T0 + 30) == ["act-c", "act-b"]
        assert await aids(device="bwc-near") == ["act-a"]
        assert await aids(device="bwc-far") == []  # considered, not commanded
        assert await aids(initiated_by="Kim") == ["act-c"]
        assert await aids(limit=2) == ["act-d", "act-c"]
        assert await aids(limit=2, after=(T0 + 20, "act-c")) == ["act-b", "act-a"]
        (a,) = await r.search(ActivationQuery(types=("taser_draw",)))
        assert (a.commanded, a.recording, a.refused) == (5, 2, 0)


async def test_area_queries_cross_the_180th_meridian(reader: LedgerQueries) -> None:
    async with reader as r:
        across = BBox.parse("179.9,-17,-179.9,-16.5")
        assert across.min_lon > across.max_lon
        got = await r.search(ActivationQuery(bbox=across))
        assert [a.aid for a in got] == ["act-c", "act-b"]
        near = Near(-16.8, -179.99999, 30.0)  # the other side of the line
        got = await r.search(ActivationQuery(near=near))
        assert [a.aid for a in got] == ["act-c", "act-b"]
        calgary = await r.search(ActivationQuery(near=Near(51.0447, -114.0719, 1.0)))
        assert [a.aid for a in calgary] == ["act-a"]


async def test_detail_gives_each_camera_its_outcome(reader: LedgerQueries) -> None:
    async with reader as r:
        early = await r.detail("act-a", now=T0 + 1.0, ack_timeout_s=5.0)
        late = await r.detail("act-a", now=T0 + 60.0, ack_timeout_s=5.0)
        assert await r.detail("act-nope", now=T0, ack_timeout_s=5.0) is None
    assert early is not None
    assert late is not None
    outcome = {c.device_id: c.outcome for c in late.cameras}
    assert outcome == {
        "bwc-own": Outcome.RECORDING,
        "bwc-near": Outcome.RECORDING,
        "bwc-slow": Outcome.ACKNOWLEDGED,
        "bwc-quiet": Outcome.NO_ACK,
        "gw-x": Outcome.NO_ACK,
        "bwc-far": Outcome.NOT_COMMANDED,
    }
    assert {c.device_id: c.outcome for c in early.cameras}["bwc-quiet"] is Outcome.PENDING
    near = next(c for c in late.cameras if c.device_id == "bwc-near")
    assert near.ack_latency_s == pytest.approx(0.009, abs=1e-6)  # first answer: received
    assert near.pre_roll_covered_s == 30.0
    assert near.recording_id == "rec-1"
    assert len(late.acks) == 4
    assert late.rule == {"event_type": "taser_draw"}


async def test_record_rebuilt_from_the_ledger_matches_the_engine_record(
    reader: LedgerQueries,
) -> None:
    async with reader as r:
        record = await r.record("act-a")
        assert await r.record("nope") is None
        recent = await r.recent(T0 - 1, limit=10)
    assert record is not None
    # Cameras of a known kind only; paired ones without a distance, as the engine sends.
    assert [(c.id, c.reason.value, c.dist) for c in record.cameras] == [
        ("bwc-near", "proximity", 8.0),
        ("bwc-own", "paired", None),
        ("bwc-quiet", "proximity", 5.0),
        ("bwc-slow", "proximity", 6.0),
    ]
    assert record.excluded == 1
    # The left-out camera with its reason, as the engine's own record carries it.
    assert [
        (c.id, c.device_kind, c.reason.value, c.dist, c.margin, c.age) for c in record.left_out
    ] == [("bwc-far", DeviceKind.BODY_CAM, "too_far", 14.0, 3.0, 0.4)]
    assert [rec.aid for rec, _ in recent] == ["act-a", "act-b", "act-c", "act-d"]
    assert [(d, a.status.value) for d, a in recent[0][1]][:2] == [
        ("bwc-near", "received"),
        ("bwc-slow", "received"),
    ]


async def test_missing_ledger_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"no activation ledger at .*start the engine first"):
        async with LedgerReader(tmp_path / "nope.sqlite3"):
            pass  # pragma: no cover


async def test_an_agency_without_a_postgres_ledger_is_a_one_line_error(
    postgres_url: str, agency: str
) -> None:
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    with pytest.raises(LedgerError, match=r"no activation ledger at .*start the engine first") as e:
        async with open_reader(url, agency=agency):
            pass  # pragma: no cover
    assert "\n" not in str(e.value)
    assert "hunter2" not in str(e.value)  # the URL is shown without its password


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1,2,3", "four numbers"),
        ("a,b,c,d", "four numbers"),
        ("1,2,3,nan", "finite"),
        ("1,50,2,40", "min before max"),
        ("200,1,2,3", "between -180 and 180"),
    ],
)
def test_bad_bbox_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        BBox.parse(text)


@given(
    lat=st.floats(-85, 85),
    lon=st.floats(-180, 180),
    radius=st.floats(1, 50_000),
    bearing=st.floats(0, 360),
    frac=st.floats(0, 0.999),
)
def test_near_box_contains_every_point_of_its_circle(
    lat: float, lon: float, radius: float, bearing: float, frac: float
) -> None:
    """The SQL prefilter box must never drop a point the exact distance would keep."""
    near = Near(lat, lon, radius)
    plat, plon = destination(lat, lon, bearing, radius * frac)
    if distance_m(lat, lon, plat, plon) > radius:
        return
    box = near.bbox()
    assert box.min_lat <= plat <= box.max_lat
    if box.min_lon <= box.max_lon:
        assert box.min_lon <= plon <= box.max_lon
    else:
        assert plon >= box.min_lon or plon <= box.max_lon


def test_the_api_summary_carries_the_ledger_row_but_its_rule() -> None:
    """``ActivationSummary`` (the REST model) declares the fields the query selects, in
    order: a column added to the ledger's activation row must be added to it too."""
    assert tuple(ActivationSummary.model_fields) == SUMMARY_FIELDS
