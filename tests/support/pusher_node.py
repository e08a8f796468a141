"""Run Node scripts of ``tests/pusher/`` (unmodified ``pusher-js`` and ``laravel-echo``
from npm, pinned in its package-lock) against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PUSHER_DIR = Path(__file__).resolve().parents[1] / "pusher"


def node_with_pusher() -> str:
    """``node``, with ``tests/pusher`` installed (``npm ci`` the first time)."""
    exe = shutil.which("node")
    npm = shutil.which("npm")
    if exe is None or npm is None:
        pytest.skip("node/npm not installed")
    if not (PUSHER_DIR / "node_modules" / "pusher-js").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PUSHER_DIR, check=True)
    return exe


def start_node(node: str, script: str, config: dict[str, Any]) -> subprocess.Popen[str]:
    """Start ``tests/pusher/<script>`` with ``config`` as its one JSON argument; it
    prints one JSON object per line on stdout."""
    return subprocess.Popen(
        [node, str(PUSHER_DIR / script), json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PUSHER_DIR,
    )
