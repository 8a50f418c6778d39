"""Small real sample files for upload tests.

Every function is deterministic: the same arguments give the same bytes, so tests can rely on
content hashes (duplicate uploads) as well as on content sniffing (filetype) and PDF parsing (pypdf).
"""

import io
import random
from datetime import datetime, timezone

from fpdf import FPDF
from PIL import Image

CREATION_DATE = datetime(2024, 3, 15, 9, 30, tzinfo=timezone.utc)  # fixed: stable bytes
TITLE = "Sample medical report"
FONT = "Helvetica"
FONT_SIZE = 12  # points
LINE_HEIGHT = 6  # millimetres
IMAGE_SIZE = (8, 8)  # pixels
IMAGE_COLOR = (200, 30, 30)  # RGB
PADDING_SEED = 1234
DEFAULT_REPORT_TEXT = (
    "DISCHARGE SUMMARY\n"
    "Patient: Jane Doe    DOB: 1978-04-12\n"
    "Diagnosis: Community-acquired pneumonia, right lower lobe (J18.1)\n"
    "Medications: Amoxicillin-clavulanate 875/125 mg twice daily for 7 days\n"
    "Labs: WBC 13.2 x10^9/L (high); CRP 86 mg/L (high)\n"
)


def pdf_bytes(text: str = DEFAULT_REPORT_TEXT, pages: int = 1) -> bytes:
    """A real PDF with `text` on every page (core font: Latin-1 characters only)."""
    pdf = _new_pdf()
    for number in range(1, pages + 1):
        _add_text_page(pdf, text, number, pages)
    return bytes(pdf.output())


def large_pdf_bytes(size_bytes: int, text: str = DEFAULT_REPORT_TEXT) -> bytes:
    """A valid one-page PDF of exactly `size_bytes`, padded with an attachment.

    The padding is an uncompressed embedded file of pseudo-random bytes, so the PDF stays
    well-formed for any reader and its size does not shrink under compression. Sizes below
    about 1.6 KB (the page plus a one-byte attachment) give that minimum instead.
    """
    overhead = len(_padded_pdf(text, 1)) - 1  # the page plus the attachment's own objects
    padding = max(1, size_bytes - overhead)
    pdf = _padded_pdf(text, padding)
    excess = len(pdf) - size_bytes  # length fields with more digits than in the 1-byte probe
    if excess > 0 and padding > excess:
        pdf = _padded_pdf(text, padding - excess)
        # Near a power of ten the length fields lose a digit again: the title takes up the rest.
        missing = size_bytes - len(pdf)
        if missing > 0:
            pdf = _padded_pdf(text, padding - excess, title_fill=missing)
    return pdf


def _padded_pdf(text: str, padding: int, title_fill: int = 0) -> bytes:
    pdf = _new_pdf(title=TITLE + "." * title_fill)
    _add_text_page(pdf, text, 1, 1)
    pdf.embed_file(
        bytes=random.Random(PADDING_SEED).randbytes(padding),
        basename="padding.bin",
        modification_date=CREATION_DATE,
        compress=False,
    )
    return bytes(pdf.output())


def png_bytes() -> bytes:
    return _image_bytes("PNG")


def jpeg_bytes() -> bytes:
    return _image_bytes("JPEG", quality=90)


def tiff_bytes() -> bytes:
    return _image_bytes("TIFF")


def webp_bytes() -> bytes:
    return _image_bytes("WEBP", lossless=True)


def text_bytes(text: str = DEFAULT_REPORT_TEXT) -> bytes:
    return text.encode("utf-8")


def _new_pdf(title: str = TITLE) -> FPDF:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(CREATION_DATE)
    pdf.set_title(title)
    pdf.set_font(FONT, size=FONT_SIZE)
    return pdf


def _add_text_page(pdf: FPDF, text: str, number: int, pages: int) -> None:
    pdf.add_page()
    pdf.multi_cell(0, LINE_HEIGHT, text)
    if pages > 1:
        pdf.ln(LINE_HEIGHT)
        pdf.cell(0, LINE_HEIGHT, f"Page {number} of {pages}")


def _image_bytes(image_format: str, **options) -> bytes:
    """Encoded by Pillow, so the files are decodable, not just sniffable."""
    buffer = io.BytesIO()
    Image.new("RGB", IMAGE_SIZE, IMAGE_COLOR).save(buffer, format=image_format, **options)
    return buffer.getvalue()
