"""The engine's side of a NATS cluster: the :class:`~actimesh.broker.transport.Transport`
whose links are :mod:`.outbound`, :mod:`.control` and :mod:`.stream` (why each is
built as it is: the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

from actimesh.broker.client import Subscription, TlsSettings, Will
from actimesh.broker.intake import Admit
from actimesh.broker.nats.control import NatsControl
from actimesh.broker.nats.outbound import NatsOutbound
from actimesh.broker.nats.stream import NatsStream
from actimesh.broker.transport import ControlHandler, OnConnect, StreamHandler

__all__ = ["NatsTransport"]


class NatsTransport:
    """One service's connections to a NATS cluster (``servers``: any of its nodes).

    ``ack_wait_s``: how long a control message may stay unacknowledged before JetStream
    gives it to another consumer (or again); ``max_ack_pending``: how many it hands
    a consumer unacknowledged (the backlog bound).
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 1000,
        timeout_s: float = 5.0,
        pull_batch: int = 64,
        pull_expires_s: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        if not servers:
            raise ValueError("NatsTransport needs at least one server")
        self.servers = list(servers)
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.timeout_s = timeout_s
        self.pull_batch = pull_batch
        self.pull_expires_s = pull_expires_s
        self.user = user
        self.password = password
        self.tls = tls

    def __repr__(self) -> str:
        return f"NatsTransport({', '.join(self.servers)})"

    def outbound(
        self, name: str, *, will: Will | None = None, on_connect: OnConnect | None = None
    ) -> NatsOutbound:
        return NatsOutbound(self, name, will, on_connect)

    def control(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: ControlHandler,
        *,
        admit: Admit,
        session_expiry_s: int = 0,
    ) -> NatsControl:
        return NatsControl(
            self, name, subscriptions, handler, admit=admit, session_expiry_s=session_expiry_s
        )

    def stream(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        handler: StreamHandler,
        *,
        max_queued: int,
    ) -> NatsStream:
        return NatsStream(self, name, subscriptions, handler, max_queued=max_queued)
