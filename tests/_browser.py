"""Debian's Chromium for the dashboard's tests, driven by Playwright for Python.

Import it as ``from _browser import chromium_page, needs_chromium`` (``tests/`` is on
``sys.path``, as for ``_helpers``). The browser is the distribution's
(``apt-get install -y chromium``: ``/usr/bin/chromium``), never one ``playwright
install`` downloads; without it the tests skip saying so. ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium_page", "needs_chromium", "png_summary"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def needs_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"the dashboard test needs Debian's Chromium at {CHROMIUM}: "
            "install Debian's chromium: apt-get install -y chromium"
        )
    pytest.importorskip("playwright", reason="pip install playwright (the dev extras)")


@contextlib.asynccontextmanager
async def chromium_page(width: int = 1400, height: int = 1000) -> AsyncIterator[Any]:
    """A page of Debian's Chromium, headless; console errors and page errors are
    collected on ``page.problems``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            problems: list[str] = []
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.problems = problems
            yield page
        finally:
            await browser.close()


def png_summary(data: bytes) -> tuple[int, int, int, float]:
    """(width, height, distinct byte values, share of non-zero bytes) of a PNG's
    decompressed image data, read without an imaging library. A blank page
    filters to rows of zeros: few distinct values, almost no non-zero bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, width, height, idat = 8, 0, 0, bytearray()
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(bytes(idat))
    nonzero = sum(1 for b in raw[:: max(1, len(raw) // 200_000)] if b) / min(len(raw), 200_000)
    return width, height, len(set(raw)), nonzero
