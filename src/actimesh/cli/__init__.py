"""The ``actimesh`` command (also ``python -m actimesh``).

    actimesh up [--sim N]         broker (managed Mosquitto), engine, dispatch map, fleet
    actimesh sim --broker URL     a simulated fleet against any broker
    actimesh drill                self-check on a real broker; non-zero exit on any miss
    actimesh bench [--sweep]      latency and ingest against the broker's own limit
    actimesh fuzz [--count N]     hostile payloads against the codec and the engine's intake
    actimesh audit verify|head|link|export|retain
                                  the tamper-evident ledger: check it, cases, retention
    actimesh devices add|import|export|list|remove|rotate|disable|enable
    actimesh integrators add|list|remove
    actimesh operators add|list|remove
    actimesh certs init|server|client|show
                                  broker accounts (shown once) and the TLS listener's CA
    actimesh users add|list|disable|enable|remove|passwd
    actimesh tokens create|list|revoke
                                  dispatch map logins and integrator API tokens

Errors an operator can cause (bad flags, config, a missing broker) print one line saying
what is wrong and how to fix it, with no traceback, and the exit code says which kind:
:data:`EXIT_USAGE` for a mistake in the flags or the configuration, :data:`EXIT_FAILED`
for a check that failed or a part that could not start.

One module per command group (``_up``, ``_drill``, ``_audit``, ``_bench``, ``_fuzz``,
``_devices``, ``_certs``, ``_accounts``), each with its parser and its handler; ``_main``
assembles them. The parts they run are imported only when a command runs, so that
``--help`` stays fast.
"""

from actimesh.cli._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from actimesh.cli._main import main

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]
