"""One auth callout process (:mod:`.callout`) of a managed cluster:
``python -m actimesh.broker.nats.run_callout CLUSTER_DIR NODE_INDEX``, started by
:meth:`~.cluster.NatsCluster.start_callout`; SIGTERM stops it. Not imported by the
package, so that ``-m`` runs it fresh."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from actimesh.broker.client import TlsSettings
from actimesh.broker.nats.callout import ACCESS_NAME, CALLOUT_NAME, CalloutService
from actimesh.broker.nats.nkeys import KeyPair

__all__ = ["main"]


def _service(cluster_dir: Path, index: int) -> CalloutService:
    conf = json.loads((cluster_dir / CALLOUT_NAME).read_text())
    urls = [str(u) for u in conf["urls"]]
    own = urls[index]
    ca = conf.get("ca")
    return CalloutService(
        [own, *(u for u in urls if u != own)],
        str(conf["user"]),
        str(conf["password"]),
        KeyPair.from_seed(str(conf["seed"])),
        cluster_dir / ACCESS_NAME,
        None if ca is None else TlsSettings(ca_file=Path(ca)),
    )


async def _serve(service: CalloutService) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with asyncio.TaskGroup() as group:
        serving = group.create_task(service.run())
        await stop.wait()
        serving.cancel()


def main(argv: list[str] | None = None) -> int:
    """``python -m actimesh.broker.nats.callout CLUSTER_DIR NODE_INDEX``."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cluster_dir, index = Path(args[0]), int(args[1])
        service = _service(cluster_dir, index)
    except (IndexError, ValueError, OSError, KeyError) as exc:
        sys.stderr.write(f"usage: callout CLUSTER_DIR NODE_INDEX, with a cluster there ({exc})\n")
        return 2
    asyncio.run(_serve(service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
