"""`swarmgate generate` answers a chat question through three chained spans."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_generate_prints_a_chat_reply() -> None:
    exe = shutil.which("swarmgate", path=str(Path(sys.executable).parent)) or "swarmgate"
    result = subprocess.run(
        [
            exe,
            "generate",
            "--model",
            "smollm2-135m-instruct",
            "--spans",
            "3",
            "What is the capital of France?",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "Paris" in result.stdout
    assert "[0, 10), [10, 20), [20, 30)" in result.stderr
