"""The report in a browser: open it in the user's browser, or load it in headless Chromium to
take a screenshot or to collect the page's console messages (the tests use that)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import webbrowser
from pathlib import Path

from compiler.errors import ToolMissingError, WaferError

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120
CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")


def find_chromium() -> str | None:
    return next((path for name in CHROMIUMS if (path := shutil.which(name))), None)


def open_in_browser(path: Path) -> bool:
    """Open `path` in the user's browser; False when there is none."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    return bool(browser.open(Path(path).resolve().as_uri()))


def screenshot(html: Path, png: Path, size: tuple[int, int] = (1400, 900),
               only: str = "") -> Path:
    """Render `html` in headless Chromium at `size` (px) and save a PNG; `only` (section ids,
    comma-separated) shows just those sections under the title."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    url = Path(html).resolve().as_uri() + (f"?only={only}" if only else "")
    result = _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
                   "--hide-scrollbars", url])
    if not png.exists() or png.stat().st_size == 0:
        raise WaferError(f"chromium wrote no screenshot ({_last_line(result.stderr)})")
    return png


def load_page(html: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and every console message it logged (errors,
    warnings, uncaught exceptions and failed loads all show up there)."""
    result = _run(["--enable-logging=stderr", "--v=0", "--dump-dom",
                   Path(html).resolve().as_uri()])
    return result.stdout, [m.group(1) for m in map(CONSOLE.search, result.stderr.splitlines())
                           if m]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise ToolMissingError("headless Chromium is not installed (looked for "
                               f"{', '.join(CHROMIUMS)}): install it, e.g. "
                               "`apt-get install chromium`, or leave out --png")
    sandbox = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(prefix="wafer-chromium-") as profile:
        cmd = [exe, "--headless", *sandbox, "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-background-networking",
               f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise WaferError(f"chromium did not finish within {TIMEOUT_S} s") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][-200:] if lines else "no message"
