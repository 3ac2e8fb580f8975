"""The load generator's lowered priority: applied for the block, undone after it, in a
process of its own session as the benchmark's workers are."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actimesh.bench.priority import lowered_priority
from actimesh.bench.settings import BenchSettings
from actimesh.errors import ConfigError

_CHILD = """
import json, os, pathlib
from actimesh.bench.priority import lowered_priority

def seen():
    group = pathlib.Path("/proc/self/autogroup")
    text = group.read_text() if group.exists() else ""
    return {"process": os.getpriority(os.PRIO_PROCESS, 0), "group": text.split()[-1:]}

with lowered_priority(7) as lowered:
    inside = seen()
print(json.dumps({"lowered": lowered.as_dict(), "inside": inside, "after": seen()}))
"""


def test_a_worker_in_its_own_session_runs_the_block_at_the_lower_priority() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        start_new_session=True,
    )
    seen = json.loads(done.stdout)
    lowered = seen["lowered"]
    assert lowered["nice"] == 7
    if lowered["how"] == "autogroup":
        # The session's group is what the scheduler weighs against other sessions.
        assert seen["inside"]["group"] == ["7"]
        assert seen["after"]["group"] == ["0"]
        assert lowered["restored"] is True
    else:
        assert lowered["how"] == "process"
        assert seen["inside"]["process"] >= 7
        # Lowering it back needs CAP_SYS_NICE: the report says whether it happened.
        assert lowered["restored"] is (seen["after"]["process"] < 7)


def test_nice_zero_changes_nothing() -> None:
    with lowered_priority(0) as lowered:
        assert lowered.as_dict() == {"nice": 0, "how": "none", "restored": True}


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_nice_value_an_unprivileged_process_cannot_take_is_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="within"), lowered_priority(nice):
        pass
    with pytest.raises(ConfigError, match="--loadgen-nice"):
        BenchSettings(loadgen_nice=nice)
