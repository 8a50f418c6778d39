"""What a file is by its bytes, not by its name or the client's Content-Type."""

from __future__ import annotations

import filetype

SNIFF_BYTES = 8192  # enough for every signature below and for a text check
ACCEPTED = {"application/pdf", "image/png", "image/jpeg", "image/tiff", "image/webp"}
TEXT = "text/plain"


def sniff_content_type(head: bytes) -> str | None:
    """The accepted type the file's first bytes show, or None.

    `filetype` knows the binary signatures; plain text has none, so text is UTF-8 that decodes and
    carries no control bytes besides whitespace.
    """
    kind = filetype.guess(head)
    if kind is not None:
        return kind.mime if kind.mime in ACCEPTED else None
    if _looks_like_text(head):
        return TEXT
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sample may end inside a multi-byte character.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)
