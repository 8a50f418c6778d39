"""A loopback stand-in for the Gemini REST API that tests can script.

The real google-genai SDK talks to it (HttpOptions(base_url=...)), so tests exercise the same
request building, response parsing and error classes as production.
"""

import asyncio
import base64
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
WAIT_TIMEOUT = 10.0  # seconds, default for wait_for_requests
SHUTDOWN_TIMEOUT = 1.0  # seconds aiohttp waits for handlers still running after stop() cancelled them
CHARS_PER_TOKEN = 4  # rough, only for plausible usageMetadata
GENERATE_PATH = re.compile(r"^/(?P<api_version>[^/]+)/models/(?P<model>[^/:]+):generateContent$")

ERROR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
ERROR_MESSAGE = {
    400: "Request contains an invalid argument.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


def default_result() -> dict[str, Any]:
    """A parsed report shaped like what the service asks Gemini for."""
    return {
        "patient": {"name": "Jane Doe", "date_of_birth": "1978-04-12", "id": None},
        "report_date": "2024-03-15",
        "report_type": "Discharge summary",
        "diagnoses": [
            {"description": "Community-acquired pneumonia, right lower lobe", "code": "J18.1"},
            {"description": "Type 2 diabetes mellitus without complications", "code": "E11.9"},
        ],
        "medications": [
            {"name": "Amoxicillin-clavulanate", "dose": "875/125 mg", "frequency": "twice daily",
             "duration": "7 days"},
            {"name": "Metformin", "dose": "500 mg", "frequency": "twice daily", "duration": None},
        ],
        "lab_results": [
            {"test": "White blood cell count", "value": "13.2", "unit": "10^9/L",
             "reference_range": "4.0-11.0", "flag": "high"},
            {"test": "C-reactive protein", "value": "86", "unit": "mg/L",
             "reference_range": "<5", "flag": "high"},
            {"test": "HbA1c", "value": "7.1", "unit": "%", "reference_range": "<6.5", "flag": "high"},
        ],
        "procedures": [
            {"name": "Chest X-ray, PA and lateral", "date": "2024-03-12"},
        ],
        "provider": {"name": "Dr. Alan Grant", "facility": "St. Mary's General Hospital"},
        "summary": (
            "45-year-old woman admitted with right lower lobe pneumonia, treated with IV then oral "
            "antibiotics with clinical improvement; discharged on oral amoxicillin-clavulanate with "
            "follow-up chest X-ray in 6 weeks."
        ),
    }


@dataclass
class GeminiRequest:
    path: str
    headers: dict[str, str]  # names lowercased
    body: Any
    model: str | None = None


@dataclass
class _ScriptedReply:
    status: int = 200
    text: str | None = None  # raw model text; None means json.dumps(fake.result)
    error_message: str | None = None
    retry_delay: float | None = None  # seconds, sent as google.rpc.RetryInfo


@dataclass
class FakeGemini:
    """Answers generateContent like Gemini; every knob may be changed between requests."""

    result: dict[str, Any] = field(default_factory=default_result)
    latency: float = 0.0  # seconds awaited before each answer: simulates a slow model
    requests: list[GeminiRequest] = field(default_factory=list)
    port: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._script: deque[_ScriptedReply] = deque()
        self._released = asyncio.Event()
        self._released.set()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._in_flight: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeGemini is not started")
        return f"http://{HOST}:{self.port}"

    # Scripting

    def fail_next(self, count: int = 1, status: int = 503, message: str | None = None,
                  retry_delay: float | None = None) -> None:
        """The next `count` requests get a Google-style error with this HTTP status."""
        message = message or ERROR_MESSAGE.get(status, f"Fake Gemini error {status}.")
        for _ in range(count):
            self._script.append(_ScriptedReply(status=status, error_message=message,
                                               retry_delay=retry_delay))

    def reply_text_next(self, text: str) -> None:
        """The next request gets this model text (e.g. not JSON) in an otherwise valid answer."""
        self._script.append(_ScriptedReply(text=text))

    def hold(self) -> None:
        """Requests arriving from now on wait until release()."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def reset(self) -> None:
        self.result = default_result()
        self.latency = 0.0
        self.requests.clear()
        self._script.clear()
        self._released.set()

    async def wait_for_requests(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[GeminiRequest]:
        """Return once `count` requests have arrived in total (held ones included)."""
        try:
            async with asyncio.timeout(timeout):
                async with self._arrived:
                    await self._arrived.wait_for(lambda: len(self.requests) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"FakeGemini got {len(self.requests)} requests, expected {count} within {timeout} s"
            ) from None
        return list(self.requests)

    # Server

    async def start(self) -> "FakeGemini":
        app = web.Application(client_max_size=0)  # no limit: tests send large inline files
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Held or slow requests end now (the client sees a disconnect) instead of delaying shutdown.
        for task in self._in_flight:
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> "FakeGemini":
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        task = asyncio.current_task()
        self._in_flight.add(task)
        try:
            return await self._answer(request)
        finally:
            self._in_flight.discard(task)

    async def _answer(self, request: web.Request) -> web.Response:
        match = GENERATE_PATH.match(request.path)
        if request.method != "POST" or match is None:
            return error_response(404, f"Fake Gemini does not serve {request.method} {request.path}.")
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "Invalid JSON payload received.")
        self.requests.append(GeminiRequest(
            path=request.path_qs, headers=lowercase_keys(request.headers), body=body, model=match["model"],
        ))
        # Taken on arrival so that fail_next() applies to requests in the order they came.
        reply = self._script.popleft() if self._script else _ScriptedReply()
        async with self._arrived:
            self._arrived.notify_all()

        await self._released.wait()
        if self.latency:
            await asyncio.sleep(self.latency)

        if reply.status != 200:
            return error_response(reply.status, reply.error_message or "", reply.retry_delay)
        text = reply.text if reply.text is not None else json.dumps(self.result)
        return web.json_response(success_body(text, match["model"], body))


def success_body(text: str, model: str, request_body: Any) -> dict[str, Any]:
    prompt_tokens = max(1, len(json.dumps(request_body)) // CHARS_PER_TOKEN)
    answer_tokens = max(1, len(text) // CHARS_PER_TOKEN)
    return {
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens,
        },
        "modelVersion": model,
    }


def error_response(status: int, message: str, retry_delay: float | None = None) -> web.Response:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": ERROR_STATUS.get(status, "UNKNOWN"),
    }
    if retry_delay is not None:
        error["details"] = [{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": f"{retry_delay:g}s",
        }]
    return web.json_response({"error": error}, status=status)


def inline_parts(request: GeminiRequest) -> list[tuple[str, bytes]]:
    """(mime_type, data) of every inline file; the SDK spells the keys either way."""
    found = []
    for content in request.body.get("contents", []):
        for part in content.get("parts", []):
            inline = part.get("inlineData") or part.get("inline_data")
            if inline is None:
                continue
            mime_type = inline.get("mimeType") or inline.get("mime_type")
            found.append((mime_type, decode_base64(inline.get("data", ""))))
    return found


def decode_base64(data: str) -> bytes:
    """google-genai sends URL-safe base64; other clients send the standard alphabet."""
    data = data.replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def text_parts(request: GeminiRequest) -> list[str]:
    """The prompt text parts, in order."""
    return [
        part["text"]
        for content in request.body.get("contents", [])
        for part in content.get("parts", [])
        if "text" in part
    ]


def lowercase_keys(headers) -> dict[str, str]:
    """HTTP header names are case-insensitive: one spelling makes test lookups predictable."""
    return {name.lower(): value for name, value in headers.items()}
