"""Where a benchmark's JSON goes: `$OUT` on the device machine, else `bench-out/`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_json(name: str, data: Any) -> Path:
    """Write `data` as `<name>.json` in the results folder; the file's path."""
    out = Path(os.environ.get("OUT", ROOT / "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path
