"""Headless Chromium for the report's browser tests (Playwright driving the system chromium).

``open_page(url, tmp)`` yields a Playwright page plus a record of everything
the page did that a report must not do: network requests other than its own
file, console errors, uncaught exceptions and dialogs (``alert``). Tests skip,
with the reason, only where Playwright or a chromium binary is missing or
chromium cannot start; any other failure is a test failure.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["FLAGS", "ARTIFACTS", "chromium_path", "require_browser", "PageEvents", "open_page", "wait_for_charts"]

#: Flags for a quiet, reproducible headless chromium that talks to nothing on its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Screenshots go here (git-ignored), so CI can keep them as artifacts.
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def chromium_path() -> str | None:
    """The chromium binary: ``$TXBENCH_CHROMIUM``, else /usr/bin/chromium, else the first on PATH."""
    env = os.environ.get("TXBENCH_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageEvents:
    """What a page did while the test watched it."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def foreign_requests(self, own_url: str) -> list[str]:
        """Every request except the page's own file (a self-contained report makes none)."""
        return [u for u in self.requests if u != own_url]


def require_browser() -> str:
    """The chromium path, or skip the test (with the reason) when Playwright or chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; no browser download needed)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set TXBENCH_CHROMIUM)")
    return exe


@contextmanager
def open_page(url: str, user_data_dir: Path, *, width: int = 1280, height: int = 900):
    """Yield ``(page, events)`` for ``url`` in a fresh headless chromium profile; skip where chromium is unusable."""
    exe = require_browser()
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            ctx = pw.chromium.launch_persistent_context(
                user_data_dir=str(user_data_dir), executable_path=exe, args=FLAGS, headless=True,
                viewport={"width": width, "height": height},
            )
        except PlaywrightError as e:
            pytest.skip(f"chromium at {exe} could not be launched: {str(e).splitlines()[0]}")
        events = PageEvents()
        try:
            ctx.on("request", lambda r: events.requests.append(r.url))
            page = ctx.new_page()
            page.on("console", lambda m: events.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: events.page_errors.append(str(err)))

            def _dialog(d):
                events.dialogs.append(f"{d.type}: {d.message}")
                d.dismiss()

            page.on("dialog", _dialog)
            page.goto(url, wait_until="load")
            yield page, events
        finally:
            ctx.close()


def wait_for_charts(page, timeout_ms: int = 60_000) -> int:
    """Wait until plotly has drawn every figure of the report; returns how many there are."""
    n = page.evaluate("JSON.parse(document.getElementById('txb-figures').textContent).length")
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {n}", timeout=timeout_ms)
    return n
