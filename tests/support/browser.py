"""Headless Chromium for page tests: the DOM after the page's scripts ran, and a screenshot.

Debian's `chromium` package; `.ci/run` installs it. Runs as an asyncio subprocess so a
node on the test's own event loop keeps serving while the browser loads its page.
"""

from __future__ import annotations

import asyncio
import shutil
from html.parser import HTMLParser
from pathlib import Path

# Virtual time the page gets to fetch /status and draw before the DOM is read.
PAGE_TIME_MS = 4000
BROWSER_TIMEOUT_S = 120


def chromium() -> str | None:
    """The Chromium binary, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


async def _run(*args: str, cwd: Path) -> str:
    binary = chromium()
    assert binary is not None, "chromium is not installed (apt-get install chromium)"
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={cwd / 'chromium-profile'}",
        f"--virtual-time-budget={PAGE_TIME_MS}",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out.decode()


async def dump_dom(url: str, workdir: Path) -> str:
    """The page's DOM, serialized, after its scripts ran for PAGE_TIME_MS of virtual time."""
    return await _run("--dump-dom", url, cwd=workdir)


async def screenshot(url: str, path: Path, workdir: Path, *, width: int = 1280, height: int = 1000) -> Path:
    """A PNG of the page at `width` x `height` after its scripts ran."""
    await _run(f"--screenshot={path}", f"--window-size={width},{height}", "--hide-scrollbars", url, cwd=workdir)
    return path


class Element:
    """An element of the dumped DOM: its attributes, its text and its child elements' tags."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.text = ""
        self.tags: list[str] = []


class DomIndex(HTMLParser):
    """Every element with an id, by id, with the text and descendant tags inside it."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "source", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, Element] = {}
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        for parent in self._open:
            parent.tags.append(tag)
        if "id" in element.attrs:
            self.by_id[element.attrs["id"]] = element
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data
