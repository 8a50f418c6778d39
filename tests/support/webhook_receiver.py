"""A loopback webhook endpoint that records deliveries and answers as scripted.

It can hold a port without listening (reserve()), so tests see a refused connection first and a
working endpoint on the same URL later, the way a customer's server goes down and comes back.
"""

import asyncio
import json
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

HOST = "127.0.0.1"
DEFAULT_PATH = "/webhooks/parsing"  # the path the migration guide uses
WAIT_TIMEOUT = 10.0  # seconds, default for wait_for
SHUTDOWN_TIMEOUT = 1.0  # seconds stop() gives in-flight handlers
SUCCESS_BODY = {"success": True}


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    json: Any  # None when the body is not JSON
    status: int  # what the receiver answered
    received_at: float  # time.time()
    verified: bool | None = None  # None when no verify_secret is set
    verify_error: str | None = None


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class WebhookReceiver:
    """Records every POST; answers 200 {"success": true} unless told otherwise."""

    def __init__(self, *, port: int | None = None, path: str = DEFAULT_PATH,
                 verify_secret: str | None = None):
        self.port = port
        self.path = path
        self.verify_secret = verify_secret
        self.deliveries: list[Delivery] = []
        self._statuses: deque[int] = deque()
        self._response_headers: dict[str, str] = {}
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @classmethod
    def reserve(cls, **kwargs: Any) -> "WebhookReceiver":
        """A receiver with a known URL that refuses connections until start()."""
        return cls(port=free_port(), **kwargs)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("WebhookReceiver has no port yet: start() or reserve() it first")
        return f"http://{HOST}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def respond_with(self, status_codes: list[int], headers: dict[str, str] | None = None) -> None:
        """The next deliveries get these statuses in order (then 200).

        `headers` (e.g. {"Retry-After": "1"}) go on every non-2xx answer from now on.
        """
        self._statuses.extend(status_codes)
        self._response_headers = dict(headers or {})

    async def wait_for(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Delivery]:
        """Return the deliveries once at least `count` have arrived."""
        try:
            async with asyncio.timeout(timeout):
                async with self._arrived:
                    await self._arrived.wait_for(lambda: len(self.deliveries) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"WebhookReceiver got {len(self.deliveries)} deliveries, "
                f"expected {count} within {timeout} s"
            ) from None
        return list(self.deliveries)

    async def start(self) -> "WebhookReceiver":
        if self._runner is not None:
            raise RuntimeError("WebhookReceiver is already started")
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, self.port or 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop listening; the port stays, so start() brings the same URL back."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> "WebhookReceiver":
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.json_response({"success": False, "error": "POST only"}, status=405)
        body = await request.read()
        headers = lowercase_keys(request.headers)
        status = self._statuses.popleft() if self._statuses else 200
        delivery = Delivery(
            path=request.path_qs, headers=headers, body=body, json=parse_json(body),
            status=status, received_at=time.time(),
        )
        if self.verify_secret is not None:
            delivery.verified, delivery.verify_error = verify(self.verify_secret, body, headers)
        self.deliveries.append(delivery)
        async with self._arrived:
            self._arrived.notify_all()

        if status == 204:
            return web.Response(status=204)
        if 200 <= status < 300:
            return web.json_response(SUCCESS_BODY, status=status)
        return web.json_response({"success": False, "error": f"scripted {status}"},
                                 status=status, headers=self._response_headers)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def verify(secret: str, body: bytes, headers: dict[str, str]) -> tuple[bool, str | None]:
    """Check a standardwebhooks signature; any failure is a result to record, not a crash."""
    try:
        Webhook(secret).verify(body, headers)
    except Exception as exc:  # WebhookVerificationError, or malformed headers (ValueError, ...)
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def lowercase_keys(headers) -> dict[str, str]:
    """HTTP header names are case-insensitive: one spelling makes test lookups predictable."""
    return {name.lower(): value for name, value in headers.items()}
