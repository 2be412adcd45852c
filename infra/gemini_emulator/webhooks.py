"""Webhooks: the WebhookService REST API the SDK calls (create / list / get / delete), and the
delivery of batch events, signed per Standard Webhooks, at least once.

Registrations are project configuration: ``/_emulator/reset`` keeps them (a test stack
registers once at start) and forgets deliveries. A batch that ends queues one delivery per
subscribed webhook, or, when the batch was created with ``webhook_config.uris``, one per URI
(those replace the registered webhooks). A dispatcher task wakes every
``webhooks.poll_seconds``, brings the batch timeline up to date (so a batch ends, and its
event leaves, without anyone polling) and sends what is due; non-2xx answers and connection
errors are retried with exponential back-off for ``webhooks.retry_window_seconds`` (24 h in
the real API, scaled down here). Faults: ``drop``, ``duplicate``, ``delay_seconds``,
``bad_signature``. Sources for each behaviour: README.md, "Webhooks".
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from infra.gemini_emulator import batch_jobs, errors
from infra.gemini_emulator.routing import json_response, versioned
from infra.gemini_emulator.state import STATE_KEY, EmulatorState
from infra.gemini_emulator.webhook_store import Delivery, Webhook, sign
from infra.gemini_emulator.wire import normalize_keys, rfc3339

log = logging.getLogger(__name__)

# google-genai 3.4.0, _gaos/types/webhooks/webhook.py (WebhookSubscribedEvent), plus
# batch.cancelled and interaction.cancelled from the JS SDK's Webhook type.
EVENTS = ("batch.succeeded", "batch.cancelled", "batch.expired", "batch.failed", "interaction.requires_action",
          "interaction.completed", "interaction.failed", "interaction.cancelled", "video.generated")
EVENT_OF_STATE = {
    batch_jobs.SUCCEEDED: "batch.succeeded",
    batch_jobs.FAILED: "batch.failed",
    batch_jobs.CANCELLED: "batch.cancelled",
    batch_jobs.EXPIRED: "batch.expired",
}
_ID = "{webhook_id:[^/:]+}"
_DISPATCHER = web.AppKey("webhook_dispatcher", asyncio.Task)


# --- queueing, from the batch timeline -----------------------------------------------------------


def on_batch_end(state: EmulatorState, record: batch_jobs.BatchRecord) -> None:
    """Queue the event of a batch that just ended (caller holds the lock)."""
    event = EVENT_OF_STATE.get(record.state)
    if event is None:
        return
    cfg = state.config["webhooks"]
    dynamic = record.webhook_config or {}
    data: dict[str, Any] = {"id": record.name}
    if record.state == batch_jobs.SUCCEEDED and record.input_file is not None:
        data["output_file_uri"] = f"files/{record.output_file_id}"
    if record.state == batch_jobs.FAILED and record.error is not None:
        data["error_code"], data["error_message"] = record.error.get("code"), record.error.get("message")
    if dynamic.get("user_metadata") is not None:
        data["user_metadata"] = dynamic["user_metadata"]
    body = json.dumps({"type": event, "version": "v1", "timestamp": rfc3339(state.wall(record.ended or state.clock())),
                       "data": data}, separators=(",", ":")).encode()
    targets: list[tuple[str, str | None]]
    if dynamic.get("uris"):
        targets = [(uri, None) for uri in dynamic["uris"]]
    else:
        targets = [(w.uri, w.secret) for w in state.webhooks.webhooks.values() if event in w.subscribed_events]
    now = state.clock()
    for uri, secret in targets:
        msg_id = "msg_" + uuid.uuid4().hex
        for _ in range(2 if cfg["duplicate"] else 1):
            delivery = Delivery(msg_id, event, record.name, uri, body, secret, next_at=now + cfg["delay_seconds"],
                                first_at=now, bad_signature=cfg["bad_signature"])
            if cfg["drop"]:
                delivery.status = "dropped"
            state.webhooks.deliveries.append(delivery)


# --- sending --------------------------------------------------------------------------------------


async def dispatch_forever(app: web.Application) -> None:
    """The dispatcher: every poll_seconds, advance the batches and send the due deliveries."""
    from infra.gemini_emulator.batches import advance_all  # batches imports this module

    state = app[STATE_KEY]
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(state.config["webhooks"]["poll_seconds"])
            with state.lock:
                advance_all(state)
                now = state.clock()
                due = [d for d in state.webhooks.deliveries if d.status == "pending" and d.next_at <= now]
                for d in due:
                    d.status = "sending"
            if due:
                await asyncio.gather(*(_attempt(state, session, d) for d in due))


async def _attempt(state: EmulatorState, session: aiohttp.ClientSession, delivery: Delivery) -> None:
    cfg = state.config["webhooks"]
    timestamp = int(time.time())  # the attempt's, not the event's: the receiver's replay window
    headers = {"Content-Type": "application/json", "webhook-id": delivery.msg_id,
               "webhook-timestamp": str(timestamp)}
    if delivery.secret is not None:
        secret = delivery.secret
        if delivery.bad_signature:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        headers["webhook-signature"] = sign(secret, delivery.msg_id, timestamp, delivery.body)
    try:
        async with session.post(delivery.uri, data=delivery.body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=cfg["timeout_seconds"])) as r:
            outcome: Any = r.status
            ok = 200 <= r.status < 300
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        outcome, ok = type(exc).__name__, False
    with state.lock:
        delivery.attempts.append(outcome)
        now = state.clock()
        if ok:
            delivery.status = "delivered"
        elif now - delivery.first_at >= cfg["retry_window_seconds"]:
            delivery.status = "failed"
        else:
            step = cfg["retry_base_seconds"] * 2 ** (len(delivery.attempts) - 1)
            delivery.next_at = now + min(cfg["retry_max_seconds"], step)
            delivery.status = "pending"


async def start_dispatcher(app: web.Application) -> None:
    app[_DISPATCHER] = asyncio.get_running_loop().create_task(dispatch_forever(app))


async def stop_dispatcher(app: web.Application) -> None:
    task = app.get(_DISPATCHER)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


# --- the WebhookService API -------------------------------------------------------------------


async def create_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = normalize_keys(json.loads(await request.read() or b"null"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.invalid_argument(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(body, dict):
        raise errors.invalid_argument("* Webhook: expected an object")
    uri, events, name = body.get("uri"), body.get("subscribed_events"), body.get("name")
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        raise errors.invalid_argument("* Webhook.uri: an http(s) URI is required")
    if not isinstance(events, list) or not events or not all(e in EVENTS for e in events):
        raise errors.invalid_argument(f"* Webhook.subscribed_events: a non-empty list from {list(EVENTS)}")
    if name is not None and not isinstance(name, str):
        raise errors.invalid_argument("* Webhook.name: expected a string")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    webhook = Webhook(uuid.uuid4().hex[:16], name, uri, list(events), secret, time.time())
    with state.lock:
        state.webhooks.webhooks[webhook.id] = webhook
    # The signing secret is returned this once (https://ai.google.dev/gemini-api/docs/webhooks).
    return json_response({**webhook.resource(), "new_signing_secret": secret})


async def list_webhooks(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        found = [w.resource() for w in state.webhooks.webhooks.values()]
    return json_response({"webhooks": found})


def _found(state: EmulatorState, webhook_id: str) -> Webhook:
    webhook = state.webhooks.webhooks.get(webhook_id)
    if webhook is None:
        raise errors.not_found("Requested entity was not found.")
    return webhook


async def get_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        return json_response(_found(state, request.match_info["webhook_id"]).resource())


async def delete_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    with state.lock:
        del state.webhooks.webhooks[_found(state, request.match_info["webhook_id"]).id]
    return json_response({})


async def get_deliveries(request: web.Request) -> web.Response:
    """``/_emulator/webhooks/deliveries``: every delivery since the last reset, oldest first."""
    state = request.app[STATE_KEY]
    with state.lock:
        return json_response({"deliveries": [d.record() for d in state.webhooks.deliveries]})


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_post(versioned("/webhooks"), create_webhook, name="webhooks.create")
    router.add_get(versioned("/webhooks"), list_webhooks, name="webhooks.list")
    router.add_get(versioned("/webhooks/" + _ID), get_webhook, name="webhooks.get")
    router.add_delete(versioned("/webhooks/" + _ID), delete_webhook, name="webhooks.delete")
    router.add_get("/_emulator/webhooks/deliveries", get_deliveries)
    app.on_startup.append(start_dispatcher)
    app.on_cleanup.append(stop_dispatcher)
