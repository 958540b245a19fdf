"""report.html in a real browser: headless Chromium renders it to a PNG, and its DOM has every figure and title and
no console error. Chromium comes from $EDGETL_CHROMIUM (``make test`` sets it with scripts/get-chromium.sh) or the
PATH; without one the test skips and says so. ``pytest -s`` prints the screenshot's path;
EDGETL_REPORT_SCREENSHOT=path keeps a copy there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import TITLES, make_run, sections

from edgetl.report import write_report

WIDTH, HEIGHT = 1280, 4000


def chromium() -> str | None:
    for candidate in (os.environ.get("EDGETL_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


pytestmark = pytest.mark.skipif(chromium() is None, reason="no Chromium: set EDGETL_CHROMIUM or install Debian's "
                                "`chromium` (scripts/get-chromium.sh does, as root)")


def headless(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, on ``page``: no sandbox (tests may run as root), no GPU, its own profile folder, console
    messages logged to stderr."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console, uncaught exceptions included, in Chromium's log (``INFO:CONSOLE``
    lines; Chromium's own startup noise, e.g. D-Bus errors, is not the page's). The page has no script, so any is
    a fault."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_the_report_renders_in_chromium_with_every_figure(tmp_path: Path):
    page = write_report(make_run(tmp_path))
    shot = tmp_path / "report.png"
    drawn = headless(page, tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")
    assert drawn.returncode == 0 and shot.is_file(), drawn.stderr[-2000:]
    print(f"\nscreenshot: {shot}")
    if os.environ.get("EDGETL_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["EDGETL_REPORT_SCREENSHOT"])
    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        colours = image.convert("RGB").resize((WIDTH // 8, HEIGHT // 8)).getcolors(maxcolors=1 << 16) or []
    inked = sum(count for count, rgb in colours if min(rgb) < 200)
    assert inked > 0.03 * (WIDTH // 8) * (HEIGHT // 8), "the page rendered (nearly) blank"
    assert len(colours) > 50  # figures in colour, not one flat background
    assert console_messages(drawn.stderr) == []

    dom = headless(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    found = sections(dom.stdout)
    assert list(found) == list(TITLES)
    for key, title in TITLES.items():
        assert f"<h2>{title}</h2>" in found[key], key
    assert dom.stdout.count("<svg") == 6 and "<img" not in dom.stdout
    assert "SHIPPED (default): student-onnx-int8-static-acc" in found["accuracy-latency"]
