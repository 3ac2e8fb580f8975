"""Webhook receivers and their deliveries, for admins.

The delivery itself is :mod:`actimesh.dispatch.webhooks` (durable, from the outbox);
these routes register and remove receivers, show what was delivered and what failed,
and send a delivery again. A receiver's signing secret is shown once, when it is added.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from actimesh.dispatch.auth import Caller, Permission, Require
from actimesh.dispatch.context import AppContext, Ctx
from actimesh.dispatch.models import (
    DeliveryOut,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
)
from actimesh.dispatch.routes.errors import ERRORS

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(Require(Permission.ADMIN))])


def _receiver(url: str) -> str:
    # A receiver URL may carry a secret in its query: the audit record keeps the rest.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def _endpoint(ctx: AppContext, webhook_id: str) -> WebhookOut:
    found = await ctx.outbox.endpoint(webhook_id)
    if found is None:
        raise HTTPException(404, f"no webhook {webhook_id!r}; GET /api/v1/webhooks lists them")
    return found


@router.post("/api/v1/webhooks", status_code=201, response_model=WebhookCreated, responses=ERRORS)
async def add_webhook(
    request: Request, body: WebhookCreate, principal: Caller, ctx: Ctx
) -> WebhookCreated:
    """Register a receiver. The response carries its signing secret, once."""
    async with ctx.auth.change(
        request, principal, "webhook.add", url=_receiver(body.url), event_types=body.event_types
    ) as record:
        endpoint = await ctx.outbox.add_endpoint(
            url=body.url,
            description=body.description,
            event_types=body.event_types,
            now=ctx.clock(),
        )
        record["webhook"] = endpoint.id
    return WebhookCreated(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=list(endpoint.event_types),
        created_ts=endpoint.created_ts,
        pending=0,
        delivered=0,
        failed=0,
        secret=endpoint.secret,
    )


@router.get("/api/v1/webhooks", response_model=list[WebhookOut], responses=ERRORS)
async def webhooks(ctx: Ctx) -> list[WebhookOut]:
    return await ctx.outbox.endpoints()


@router.get("/api/v1/webhooks/{webhook_id}", response_model=WebhookOut, responses=ERRORS)
async def webhook(webhook_id: str, ctx: Ctx) -> WebhookOut:
    return await _endpoint(ctx, webhook_id)


@router.delete("/api/v1/webhooks/{webhook_id}", status_code=204, responses=ERRORS)
async def delete_webhook(
    request: Request, webhook_id: str, principal: Caller, ctx: Ctx
) -> Response:
    """Stop deliveries to this receiver and forget them."""
    async with ctx.auth.change(request, principal, "webhook.delete", webhook=webhook_id):
        if not await ctx.outbox.delete_endpoint(webhook_id):
            raise HTTPException(404, f"no webhook {webhook_id!r}; GET /api/v1/webhooks lists them")
    return Response(status_code=204)


@router.get(
    "/api/v1/webhooks/{webhook_id}/deliveries",
    response_model=list[DeliveryOut],
    responses=ERRORS,
)
async def deliveries(
    webhook_id: str,
    ctx: Ctx,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    """This receiver's deliveries, newest first, with attempts and last error."""
    await _endpoint(ctx, webhook_id)
    return await ctx.outbox.deliveries(webhook_id, status=status, limit=limit)


@router.get("/api/v1/deliveries/{delivery_id}", response_model=DeliveryOut, responses=ERRORS)
async def delivery(delivery_id: str, ctx: Ctx) -> DeliveryOut:
    found = await ctx.outbox.delivery(delivery_id)
    if found is None:
        raise HTTPException(404, f"no delivery {delivery_id!r}")
    return found


@router.post(
    "/api/v1/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=DeliveryOut,
    responses=ERRORS,
)
async def retry(request: Request, delivery_id: str, principal: Caller, ctx: Ctx) -> DeliveryOut:
    """Send a pending or failed delivery again now (same delivery id)."""
    async with ctx.auth.change(request, principal, "delivery.retry", delivery=delivery_id):
        if not await ctx.outbox.retry(delivery_id, now=ctx.clock()):
            raise HTTPException(404, f"no undelivered delivery {delivery_id!r}")
    ctx.webhooks.wake()
    found = await ctx.outbox.delivery(delivery_id)
    if found is None:  # pragma: no cover - deleted between the two calls
        raise HTTPException(404, f"no delivery {delivery_id!r}")
    return found
