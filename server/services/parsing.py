"""Turning report files into structured data: Gemini, or a local text extractor on the embedded defaults.

Errors are classified here, where the transport is known, into retryable and permanent ones. Their
messages name codes and positions, never file names or content: they reach logs and webhooks.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BaseModel, ValidationError

from server.errors import InvalidModelOutput, JobError, ParserRejected, ParserUnavailable, UnreadableFile
from server.metrics import Metrics

log = logging.getLogger(__name__)

INLINE_LIMIT_BYTES = 20 * 1024 * 1024  # Gemini's limit for a request with inline files
GEMINI_IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp"}
RETRYABLE_API_CODES = {408, 429, 500, 502, 503, 504}

PROMPT = (
    "Extract the content of this medical report (one or more files of the same report) into the "
    "JSON schema given. Copy values as written; use null for anything the report does not state "
    "and an empty list when a list has no entries. Do not invent codes or values."
)


# --- the schema Gemini answers in ----------------------------------------------------------


class Patient(BaseModel):
    name: str | None = None
    date_of_birth: str | None = None
    id: str | None = None


class Diagnosis(BaseModel):
    description: str | None = None
    code: str | None = None


class Medication(BaseModel):
    name: str | None = None
    dose: str | None = None
    frequency: str | None = None
    duration: str | None = None


class LabResult(BaseModel):
    test: str | None = None
    value: str | None = None
    unit: str | None = None
    reference_range: str | None = None
    flag: str | None = None


class Procedure(BaseModel):
    name: str | None = None
    date: str | None = None


class Provider(BaseModel):
    name: str | None = None
    facility: str | None = None


class MedicalReport(BaseModel):
    patient: Patient | None = None
    report_date: str | None = None
    report_type: str | None = None
    diagnoses: list[Diagnosis] = []
    medications: list[Medication] = []
    lab_results: list[LabResult] = []
    procedures: list[Procedure] = []
    provider: Provider | None = None
    summary: str | None = None


REPORT_SCHEMA = types.Schema.from_json_schema(json_schema=types.JSONSchema(**MedicalReport.model_json_schema()))


# --- parsers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFile:
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ParseResult:
    data: dict[str, Any]
    parser: str
    usage: dict[str, int] | None = None


class ReportParser(Protocol):
    name: str

    async def parse(self, files: list[ReportFile]) -> ParseResult: ...

    async def close(self) -> None: ...


class GeminiParser:
    """Gemini through google-genai's async client, inline files, JSON against `MedicalReport`."""

    def __init__(
        self,
        api_key: str,
        model: str,
        *,
        base_url: str | None,
        timeout_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self.name = f"gemini:{model}"
        self.metrics = metrics
        self.client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url,
                timeout=int(timeout_seconds * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),  # the job's backoff owns retries
            ),
        )
        # Given the pydantic class, the SDK rebuilds its schema on every call: about 15 ms of CPU per
        # job (scripts/benchmark.py). Converted once through the SDK's public converter, it costs 1 ms.
        self.config = types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=REPORT_SCHEMA, temperature=0
        )

    async def parse(self, files: list[ReportFile]) -> ParseResult:
        parts = [part for index, f in enumerate(files, 1) for part in await _gemini_parts(index, f)]
        if sum(_part_size(p) for p in parts) > INLINE_LIMIT_BYTES:
            raise ParserRejected("the files are larger than Gemini accepts in one request")
        response = await self._generate(parts)
        usage = _usage(response)
        try:
            data = _report_from_text(response)
        except JobError:
            self._count("unusable_output", usage)
            raise
        self._count("ok", usage)
        return ParseResult(data=data, parser=self.name, usage=usage)

    async def _generate(self, parts: list[types.Part]) -> types.GenerateContentResponse:
        """One generateContent call; failures become retryable or permanent errors, each one counted."""
        try:
            return await self.client.aio.models.generate_content(
                model=self.model,
                contents=[*parts, PROMPT],
                config=self.config,
            )
        except genai_errors.APIError as exc:
            self._count(f"http_{exc.code}")
            detail = f"Gemini answered {exc.code} {exc.status or ''}".strip()
            if exc.code in RETRYABLE_API_CODES:
                raise ParserUnavailable(detail, retry_after=_retry_delay(exc)) from exc
            raise ParserRejected(detail) from exc
        except (TimeoutError, asyncio.TimeoutError) as exc:
            self._count("timeout")
            raise ParserUnavailable("Gemini did not answer in time") from exc
        except (aiohttp.ClientError, httpx.TransportError, ConnectionError) as exc:
            self._count("unreachable")
            raise ParserUnavailable(f"Gemini unreachable: {type(exc).__name__}") from exc

    def _count(self, result: str, usage: dict[str, int] | None = None) -> None:
        if self.metrics is not None:
            self.metrics.gemini_called(result, usage)

    async def close(self) -> None:
        await self.client.aio.aclose()


def _part_size(part: types.Part) -> int:
    if part.inline_data is not None and part.inline_data.data is not None:
        return len(part.inline_data.data)
    return len((part.text or "").encode("utf-8"))


def _report_from_text(response: types.GenerateContentResponse) -> dict[str, Any]:
    text = response.text
    if not text:
        reason = response.candidates[0].finish_reason if response.candidates else "no candidates"
        raise ParserRejected(f"Gemini returned no content ({reason})")
    try:
        return MedicalReport.model_validate_json(text).model_dump(mode="json")
    except ValidationError as exc:
        # The error's own text would quote the model's output: keep only the count.
        raise InvalidModelOutput(f"model output is not valid JSON for the report schema ({exc.error_count()} errors)") from None


def _usage(response: types.GenerateContentResponse) -> dict[str, int] | None:
    meta = response.usage_metadata
    if meta is None:
        return None
    return {
        "prompt_tokens": meta.prompt_token_count or 0,
        "output_tokens": meta.candidates_token_count or 0,
        "total_tokens": meta.total_token_count or 0,
    }


def _retry_delay(exc: genai_errors.APIError) -> float | None:
    """The `RetryInfo.retryDelay` Google attaches to 429s, in seconds."""
    body = exc.details if isinstance(exc.details, dict) else {}
    for detail in (body.get("error") or {}).get("details") or []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


async def _gemini_parts(index: int, file: ReportFile) -> list[types.Part]:
    """Gemini takes PDF, PNG, JPEG and WEBP inline; TIFF (common for faxed reports) becomes PNG pages."""
    if file.content_type == "image/tiff":
        pages = await asyncio.to_thread(_tiff_to_png_pages, index, file.data)
        return [types.Part.from_bytes(data=page, mime_type="image/png") for page in pages]
    if file.content_type == "text/plain":
        return [types.Part.from_text(text=file.data.decode("utf-8", errors="replace"))]
    return [types.Part.from_bytes(data=file.data, mime_type=file.content_type)]


def _tiff_to_png_pages(index: int, data: bytes) -> list[bytes]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            pages = []
            for frame in ImageSequence.Iterator(image):
                out = io.BytesIO()
                frame.convert("RGB").save(out, format="PNG")
                pages.append(out.getvalue())
            return pages
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableFile(f"file {index} is not a readable TIFF image") from exc


class LocalTextParser:
    """Text of PDFs and text files without any model: the embedded default, results marked as such."""

    name = "local-text"

    async def parse(self, files: list[ReportFile]) -> ParseResult:
        documents = []
        for index, file in enumerate(files, 1):
            documents.append(await asyncio.to_thread(_extract_text, index, file))
        data = MedicalReport().model_dump(mode="json")
        data["source"] = "local_text_extraction"
        data["note"] = "Extracted text only: set GEMINI_API_KEY for structured fields."
        data["documents"] = documents
        return ParseResult(data=data, parser=self.name)

    async def close(self) -> None:
        return None


def _extract_text(index: int, file: ReportFile) -> dict[str, Any]:
    if file.content_type == "text/plain":
        return {"file": index, "pages": 1, "text": file.data.decode("utf-8", errors="replace")}
    if file.content_type == "application/pdf":
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError

        try:
            reader = PdfReader(io.BytesIO(file.data))
            texts = [page.extract_text() or "" for page in reader.pages]
        except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
            raise UnreadableFile(f"file {index} is not a readable PDF") from exc
        return {"file": index, "pages": len(texts), "text": "\n\n".join(texts)}
    raise UnreadableFile(
        f"file {index} is an image ({file.content_type}); images need Gemini: set GEMINI_API_KEY"
    )
