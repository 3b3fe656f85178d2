"""The report in a browser: open it in the user's browser, or load it in headless Chromium to
take a screenshot or to collect the page's console messages (the tests use that)."""

from __future__ import annotations

import json
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
PROBED = re.compile(r'"CLIPPED (.*)", source: ')


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


def load_page(html: Path, size: tuple[int, int] = (1400, 900)) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran in a window of `size` (px), and every console
    message it logged (errors, warnings, uncaught exceptions and failed loads all show up)."""
    result = _run(["--enable-logging=stderr", "--v=0", f"--window-size={size[0]},{size[1]}",
                   "--hide-scrollbars", "--dump-dom", Path(html).resolve().as_uri()])
    return result.stdout, [m.group(1) for m in map(CONSOLE.search, result.stderr.splitlines())
                           if m]


# Text the page cuts off: for every text element, each clipping ancestor (an element whose
# overflow is not visible, e.g. a scrolling table, and every <svg>) that it sticks out of, and
# sticking out of the viewport sideways. Vertical scrolling is fine, so only an <svg> counts
# top and bottom.
CLIPPED_JS = """
window.addEventListener("load", () => {
  const vw = document.documentElement.clientWidth, bad = [];
  const name = (el) => `${el.tagName.toLowerCase()}.${el.getAttribute("class") || ""} "` +
    `${(el.textContent || "").trim().slice(0, 40)}"`;
  const sel = "svg text, td, th, .kpi div, figcaption, .ramp span, .ramp div, .cap, .note, " +
    "a, label, h1, h2, h3";
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (el.closest("[hidden], #tip") || !r.width || !r.height) continue;
    if (r.left < -1 || r.right > vw + 1) bad.push(`${name(el)} leaves the viewport`);
    for (let c = el.parentElement; c && c !== document.body; c = c.parentElement) {
      const svg = c.tagName.toLowerCase() === "svg";
      if (!svg && getComputedStyle(c).overflowX === "visible") continue;
      const b = c.getBoundingClientRect();
      if (r.left < b.left - 1 || r.right > b.right + 1 ||
          (svg && (r.top < b.top - 1 || r.bottom > b.bottom + 1)))
        bad.push(`${name(el)} is cut off by ${c.tagName.toLowerCase()}.` +
                 `${c.getAttribute("class") || c.id}`);
    }
  }
  console.log("CLIPPED " + JSON.stringify(bad));
});
"""


def clipped_text(html: Path, size: tuple[int, int] = (1400, 900)) -> list[str]:
    """What text `html` cuts off in a `size` window: one line per element and container."""
    page = Path(html)
    probe = page.with_name(f".clipped-{page.name}")  # beside it: relative links still resolve
    probe.write_text(page.read_text().replace("</body>", f"<script>{CLIPPED_JS}</script></body>"))
    try:
        _, console = load_page(probe, size)
    finally:
        probe.unlink(missing_ok=True)
    found = [m.group(1) for m in map(PROBED.match, console) if m]
    if not found:
        raise WaferError(f"the layout probe did not run in {html} ({console[-1:]})")
    return json.loads(found[-1])


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
