"""The codec target: each payload decoded as every inbound model and by the fast path."""

from __future__ import annotations

from actimesh.broker.codec import (
    REASONS,
    decode,
    decode_telemetry,
    encode,
)
from actimesh.errors import PayloadError
from actimesh.fuzz._findings import _describe
from actimesh.fuzz._scenario import INBOUND

#: A PayloadError is one line of at most this many characters (a dead letter's detail).
_MAX_ERROR_TEXT = 1024


def _unruly(exc: PayloadError) -> str | None:
    """What is wrong with a PayloadError's reason or text, if anything."""
    text = str(exc)
    if exc.reason not in REASONS:
        return f"reason {exc.reason!r} is not one of {sorted(REASONS)}"
    if not text.isprintable():
        return f"error text is not one printable line: {text[:120]!r}"
    if len(text) > _MAX_ERROR_TEXT:
        return f"error text is {len(text)} characters (limit {_MAX_ERROR_TEXT})"
    return None


def check_codec(payload: bytes) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Decode ``payload`` as every inbound model and by ``decode_telemetry``.

    Returns each model's outcome (``"ok"`` or the PayloadError reason) and the problems
    found, as ``(problem, detail)``: any other exception (``crash``), a reason outside
    the fixed set or an unruly error text (``bad_error``), a fast path that disagrees with
    the model (``disagree``), an accepted model that does not survive re-encoding
    (``round_trip``).
    """
    outcomes: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for model in INBOUND:
        try:
            msg = decode(model, payload)
        except PayloadError as exc:
            outcomes[model.kind] = exc.reason
            unruly = _unruly(exc)
            if unruly is not None:
                problems.append(("bad_error", f"{model.kind}: {unruly}"))
            continue
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            outcomes[model.kind] = "crash"
            problems.append(("crash", f"decode({model.kind}): {_describe(exc)}"))
            continue
        outcomes[model.kind] = "ok"
        try:
            again = decode(model, encode(msg))
        except PayloadError as exc:
            problems.append(("round_trip", f"{model.kind}: re-encoded it is {exc}"))
        else:
            if again != msg:
                problems.append(("round_trip", f"{model.kind}: {msg!r} came back as {again!r}"))
    try:
        fast: object = "ok" if decode_telemetry(payload) else "?"
    except PayloadError as exc:
        fast = exc.reason
    except Exception as exc:  # noqa: BLE001
        fast = "crash"
        problems.append(("crash", f"decode_telemetry: {_describe(exc)}"))
    if fast != outcomes["telemetry"]:
        problems.append(("disagree", f"decode_telemetry: {fast}, decode: {outcomes['telemetry']}"))
    return outcomes, problems
