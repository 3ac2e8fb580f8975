"""Self-checks of the whole mesh on a real broker: ``actimesh drill``.

Each drill starts its own Mosquitto and engine, fires triggers at devices it placed
itself, and judges the outcome against expectations written down as geometry and
counts, not computed by the engine's code, so a drill can disagree with the engine:

* :func:`run_drill` (:mod:`~actimesh.drills.activation`): exactly the right cameras
  record, with their whole pre-roll, at known distances in awkward places, on a managed
  Mosquitto (:func:`mosquitto_mesh`) or the cluster shape (:func:`cluster_mesh`);
* :func:`run_fault_drill` (:mod:`~actimesh.drills.faults`): no activation lost or
  duplicated while brokers restart, engines die and cameras drop out;
* :func:`run_cluster_fault_drill` (:mod:`~actimesh.drills.cluster_faults`): the same
  on the cluster shape, while NATS nodes, an engine and PostgreSQL fail;
* :mod:`actimesh.drills.media`: real H.264 from filming to retention. It is imported on
  its own, so that the other drills (and the engines they start) never load PyAV.

The drills sit above the composition root's packages and use them as an operator would;
nothing but the command line imports them.
"""

from actimesh.drills._scratch import scratch_dir
from actimesh.drills.activation import (
    DrillReport,
    Placement,
    Scenario,
    default_scenarios,
    mosquitto_mesh,
    run_drill,
)
from actimesh.drills.cluster_faults import CLUSTER_SCENARIOS, cluster_mesh, run_cluster_fault_drill
from actimesh.drills.faults import SCENARIOS, FaultReport, FaultResult, run_fault_drill

__all__ = [
    "CLUSTER_SCENARIOS",
    "SCENARIOS",
    "DrillReport",
    "FaultReport",
    "FaultResult",
    "Placement",
    "Scenario",
    "cluster_mesh",
    "default_scenarios",
    "mosquitto_mesh",
    "run_cluster_fault_drill",
    "run_drill",
    "run_fault_drill",
    "scratch_dir",
]
