"""Headless Chromium (Debian's `chromium`) for checking HTML reports the way a user opens them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """Load `page`; return the rendered DOM and any console errors the page logged."""
    run = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    return run.stdout, errors


def screenshot(page: Path, out: Path, profile: Path, size: str = "1200,1600") -> None:
    subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--screenshot={out}", page.as_uri()], capture_output=True, timeout=120, check=True)
