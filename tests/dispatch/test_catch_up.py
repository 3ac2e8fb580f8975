"""The map caught up from the ledger when the feed reconnects: an activation the engine
wrote but the bus never delivered is put on the map with its camera's acknowledgement;
one decided a moment ago is left to the bus; one the bus brought is not counted twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actimesh.broker.codec import encode
from actimesh.ledger import AckRow, open_ledger
from tests.dispatch.conftest import in_the_ledger_only, running_dispatch, taser_record
from tests.integration.harness import mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_reconnection_puts_what_the_bus_lost_on_the_map(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    # Only a reconnection reads the ledger here: the periodic catch-up never comes round.
    async with (
        mesh(agency, broker_port, tmp_path, engine=False) as m,
        running_dispatch(m, tmp_path, webhook_reconcile_s=3600.0) as svc,
    ):
        lost = taser_record("lost", time.time() - 10.0)
        fresh = taser_record("fresh", camera="bwc-2")
        await in_the_ledger_only(ledger, lost, agency)
        await in_the_ledger_only(ledger, fresh, agency)
        async with open_ledger(ledger, agency=agency) as writer:
            await writer.record_ack(
                AckRow(lost.aid, "bwc-1", "recording", 30.0, "rec-1", lost.ts + 1, lost.ts + 1.1)
            )
        carried = taser_record("carried", time.time() - 10.0, camera="bwc-3")
        await in_the_ledger_only(ledger, carried, agency)
        async with m.client() as client:
            await client.publish(m.topics.activations(carried.type), encode(carried), qos=1)
        await eventually(lambda: carried.aid in svc.state.activations)
        assert lost.aid not in svc.state.activations

        svc.feed.reconnected.set()  # what the control link's next connection does
        await eventually(lambda: lost.aid in svc.state.activations)
        view = svc.state.activations[lost.aid].to_json()
        assert [(c["id"], c["status"]) for c in view["cameras"]] == [("bwc-1", "recording")]
        assert fresh.aid not in svc.state.activations  # still on its way over the bus
        assert svc.state.stats.activations_caught_up == 1
        assert svc.state.stats.duplicate_activations == 0

        # The bus delivers the fresh one after all: on the map once, by the bus.
        async with m.client() as client:
            await client.publish(m.topics.activations(fresh.type), encode(fresh), qos=1)
        await eventually(lambda: fresh.aid in svc.state.activations)
        assert svc.state.stats.activations_caught_up == 1
        assert svc.state.stats.duplicate_activations == 0
