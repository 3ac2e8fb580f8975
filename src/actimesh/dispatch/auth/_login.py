"""Password logins: limited before the costly hash runs, and the same answer for every
way of getting it wrong.

Logins are limited per user name and per client address (failures in a sliding window;
then 429 with ``Retry-After``), compared in constant time (scrypt, then
``hmac.compare_digest``; an unknown user is checked against a dummy hash so it takes as
long), and answered with the same error whether the user is unknown, disabled or the
password wrong. Only a few hashes run at once, and only a few more wait: a flood of
logins gets 429 instead of a growing queue that eats the memory and the cores.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections import Counter

from actimesh.dispatch.accounts import AccountStore, hash_password, verify_password
from actimesh.dispatch.audit import AuditEvent, AuditTrail
from actimesh.dispatch.auth._principal import Principal, session_principal
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import LedgerError
from actimesh.security.limiter import LoginLimiter

__all__ = ["LoginDesk", "LoginRefusedError"]

log = logging.getLogger(__name__)

#: Logins checked at once (each takes ~0.25 s of one core and 32 MiB); more wait their turn.
_HASHING = 2
#: Logins waiting for a check; beyond this the answer is 429 rather than a growing queue.
_MAX_PENDING_LOGINS = 16


class LoginRefusedError(Exception):
    """A login that did not succeed: the status and one-line message to answer with."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class LoginDesk:
    """Checks user names and passwords, and opens a session for the right ones.

    ``outcomes`` counts the attempts by outcome (for ``/metrics``).
    """

    def __init__(
        self,
        *,
        store: AccountStore,
        audit: AuditTrail,
        settings: DispatchSettings,
        outcomes: Counter[str],
    ) -> None:
        self.store = store
        self.audit = audit
        self.outcomes = outcomes
        self.limiter = LoginLimiter(
            per_user=settings.login_max_failures,
            per_client=settings.login_max_failures_per_client,
            window_s=settings.login_window_s,
        )
        self._hashing = asyncio.Semaphore(_HASHING)
        self._pending = 0
        self._dummy: str | None = None

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16))
        return self._dummy

    async def login(
        self, client: str, username: str, password: str, *, replaces: str | None
    ) -> tuple[Principal, str]:
        """Check a user name and password from ``client``; the principal and a new
        session id (ending the browser's session ``replaces``, if it had one).

        Raises :class:`LoginRefusedError` (401, 429 or 503). Every outcome is audited;
        a success that cannot be audited is refused.
        """
        name = username.strip().lower()
        wait = self.limiter.blocked_for(name, client)
        if wait > 0:
            self.outcomes["limited"] += 1
            if self.limiter.first_refusal(name, client, wait):
                known = await self.store.user(name) if name else None
                await self.audit.record_or_log(
                    AuditEvent.LOGIN,
                    name if known else "unknown-user",
                    "locked_out",
                    {
                        "client": client,
                        "reason": "too many failed logins",
                        "retry_after_s": math.ceil(wait),
                    },
                )
            raise LoginRefusedError(
                429, f"too many failed logins; try again in {math.ceil(wait)} s", wait
            )
        if self._pending >= _MAX_PENDING_LOGINS:
            self.outcomes["busy"] += 1
            raise LoginRefusedError(429, "too many logins at once; try again in a second", 1.0)
        started = self.limiter.begin(name, client)
        self._pending += 1
        try:
            found = await self.store.password_hash(name) if name else None
            encoded = found[1] if found is not None else await self._dummy_hash()
            async with self._hashing:
                matches = await asyncio.to_thread(verify_password, password, encoded)
        finally:
            self._pending -= 1
        user = found[0] if found is not None else None
        if user is None or not matches or user.disabled:
            reason = "unknown user" if user is None else "disabled" if matches else "wrong password"
            self.outcomes["denied"] += 1
            await self.audit.record_or_log(
                AuditEvent.LOGIN,
                user.name if user else "unknown-user",
                "denied",
                {"client": client, "reason": reason},
            )
            # The same answer whatever the reason: no user-name oracle.
            raise LoginRefusedError(401, "wrong user name or password")
        self.limiter.succeeded(name, client, started)
        session_id, session = await self.store.create_session(
            user, client=client, replaces=replaces
        )
        principal = session_principal(session, session_id)
        try:
            await self.audit.record(
                AuditEvent.LOGIN,
                user.name,
                "success",
                {"client": client, "role": user.role.value, "session": principal.credential},
            )
        except LedgerError:
            await self.store.end_session(session_id)
            self.outcomes["unaudited"] += 1
            log.exception(
                "dispatch: login of %s refused: the audit ledger is not writable", user.name
            )
            raise LoginRefusedError(
                503, "login refused: the audit ledger cannot be written; tell an administrator"
            ) from None
        self.outcomes["success"] += 1
        return principal, session_id
