"""The web console: static HTML, CSS and JavaScript modules served by the gateway at `/` (no build step)."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
