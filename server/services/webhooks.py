"""Building and sending one webhook delivery; when to try again is the worker's policy.

Deliveries follow Standard Webhooks: `webhook-id` stays the same on every retry of one message,
and with `WEBHOOK_SECRET` set each one is signed so receivers can check where it came from.
"""

from __future__ import annotations

import email.utils
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import aiohttp
from standardwebhooks import Webhook

log = logging.getLogger(__name__)

USER_AGENT = "report-parser-webhooks/1"


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    status_code: int | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait
    error: str | None = None  # the kind of failure, never the receiver's body


class WebhookSender:
    def __init__(self, *, secret: str | None, timeout_seconds: float) -> None:
        self.signer = Webhook(secret) if secret else None
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers={"User-Agent": USER_AGENT})
        return self._session

    def headers(self, message_id: str, body: str, now: datetime) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self.signer is not None:
            headers["webhook-signature"] = self.signer.sign(message_id, now, body)
        return headers

    async def send(self, url: str, message_id: str, payload: dict[str, Any]) -> DeliveryOutcome:
        body = json.dumps(payload, separators=(",", ":"))
        headers = self.headers(message_id, body, datetime.now(timezone.utc))
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return DeliveryOutcome(delivered=True, status_code=response.status)
                return DeliveryOutcome(
                    delivered=False,
                    status_code=response.status,
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    error=f"receiver answered {response.status}",
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return DeliveryOutcome(delivered=False, error=f"receiver unreachable: {type(exc).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
