"""The two parsers: Gemini through the real SDK against the fake server, and the local text extractor."""

from __future__ import annotations

import pytest

from server.errors import InvalidModelOutput, ParserRejected, ParserUnavailable, UnreadableFile
from server.services.parsing import GeminiParser, LocalTextParser, MedicalReport, ReportFile
from tests.support import documents
from tests.support.fake_gemini import default_result, inline_parts, text_parts


@pytest.fixture
async def gemini(fake_gemini):
    parser = GeminiParser("test-key", "gemini-2.5-flash", base_url=fake_gemini.base_url, timeout_seconds=2)
    yield parser
    await parser.close()


async def test_gemini_returns_the_schema_and_usage(gemini, fake_gemini):
    pdf = documents.pdf_bytes("report")
    result = await gemini.parse([ReportFile("application/pdf", pdf)])
    assert result.data == MedicalReport.model_validate(default_result()).model_dump(mode="json")
    assert result.parser == "gemini:gemini-2.5-flash"
    assert result.usage["total_tokens"] > 0
    [request] = fake_gemini.requests
    assert request.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == "test-key"
    assert inline_parts(request) == [("application/pdf", pdf)]
    config = request.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert "diagnoses" in str(config["responseSchema"])


async def test_gemini_schema_converted_once_matches_the_sdks_own(gemini, fake_gemini):
    """The parser converts MedicalReport once (the SDK would per call); fields, types and nullability
    must be those the SDK derives from the pydantic class itself (titles and ordering aside)."""
    from google.genai import types

    await gemini.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=MedicalReport, temperature=0)
    await gemini.client.aio.models.generate_content(model=gemini.model, contents=["x"], config=config)
    ours, sdks = fake_gemini.requests
    ours_schema, sdks_schema = (r.body["generationConfig"]["responseSchema"] for r in (ours, sdks))
    assert schema_shape(ours_schema) == schema_shape(sdks_schema)
    assert "diagnoses" in ours_schema["properties"]


def schema_shape(schema):
    """A wire schema without the descriptive keys the two conversions differ in."""
    if isinstance(schema, dict):
        return {k: schema_shape(v) for k, v in schema.items() if k not in ("title", "propertyOrdering", "property_ordering")}
    if isinstance(schema, list):
        return [schema_shape(v) for v in schema]
    return schema


async def test_gemini_missing_fields_become_null(gemini, fake_gemini):
    fake_gemini.result = {"summary": "only a summary"}
    result = await gemini.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    assert result.data["summary"] == "only a summary"
    assert result.data["patient"] is None and result.data["diagnoses"] == []


async def test_gemini_text_and_tiff(gemini, fake_gemini):
    await gemini.parse([ReportFile("text/plain", b"Hb 13.1 g/dL"), ReportFile("image/tiff", documents.tiff_bytes())])
    [request] = fake_gemini.requests
    assert "Hb 13.1 g/dL" in text_parts(request)
    assert [mime for mime, _ in inline_parts(request)] == ["image/png"]


@pytest.mark.parametrize("status, error", [(429, ParserUnavailable), (500, ParserUnavailable), (503, ParserUnavailable), (400, ParserRejected), (403, ParserRejected)])
async def test_gemini_errors_are_classified(gemini, fake_gemini, status, error):
    fake_gemini.fail_next(1, status=status)
    with pytest.raises(error) as caught:
        await gemini.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    assert str(status) in caught.value.message


async def test_gemini_retry_delay_is_read(gemini, fake_gemini):
    fake_gemini.fail_next(1, status=429, retry_delay=7)
    with pytest.raises(ParserUnavailable) as caught:
        await gemini.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    assert caught.value.retry_after == 7


async def test_gemini_timeout_is_retryable(fake_gemini):
    parser = GeminiParser("k", "gemini-2.5-flash", base_url=fake_gemini.base_url, timeout_seconds=0.2)
    fake_gemini.hold()
    try:
        with pytest.raises(ParserUnavailable):
            await parser.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    finally:
        fake_gemini.release()
        await parser.close()


async def test_gemini_unreachable_is_retryable():
    from tests.support.webhook_receiver import free_port

    parser = GeminiParser("k", "gemini-2.5-flash", base_url=f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    try:
        with pytest.raises(ParserUnavailable):
            await parser.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    finally:
        await parser.close()


async def test_gemini_output_that_is_not_json_is_permanent(gemini, fake_gemini):
    fake_gemini.reply_text_next("Patient Jane Doe has pneumonia")
    with pytest.raises(InvalidModelOutput) as caught:
        await gemini.parse([ReportFile("application/pdf", documents.pdf_bytes("x"))])
    assert "Jane" not in caught.value.message


async def test_local_parser_extracts_pdf_and_text():
    parser = LocalTextParser()
    result = await parser.parse(
        [ReportFile("application/pdf", documents.pdf_bytes("Creatinine 1.1 mg/dL")), ReportFile("text/plain", b"Note")]
    )
    assert result.parser == "local-text"
    assert result.data["source"] == "local_text_extraction"
    assert "Creatinine 1.1 mg/dL" in result.data["documents"][0]["text"]
    assert result.data["documents"][1]["text"] == "Note"
    assert result.data["diagnoses"] == [] and result.data["patient"] is None


async def test_local_parser_fails_images_clearly():
    with pytest.raises(UnreadableFile) as caught:
        await LocalTextParser().parse([ReportFile("image/png", documents.png_bytes())])
    assert "GEMINI_API_KEY" in caught.value.message and caught.value.retryable is False


async def test_local_parser_fails_broken_pdf():
    with pytest.raises(UnreadableFile):
        await LocalTextParser().parse([ReportFile("application/pdf", b"%PDF-1.4\n garbage without structure")])
