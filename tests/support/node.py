"""Node for the tests: the npm packages of ``tests/aisdk/`` (the AI SDK) and
``tests/pusher/`` (unmodified ``pusher-js`` and ``laravel-echo``), pinned in their
package-locks, and scripts run against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PUSHER_DIR = Path(__file__).resolve().parents[1] / "pusher"


def node_with(directory: Path, package: str) -> str:
    """``node``, with the packages of ``directory`` installed (``npm ci`` the first
    time, when ``node_modules/<package>`` is missing)."""
    exe = shutil.which("node")
    npm = shutil.which("npm")
    if exe is None or npm is None:
        pytest.skip("node/npm not installed")
    if not (directory / "node_modules" / package).is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=directory, check=True)
    return exe


def run_script(node: str, script: Path, argument: object, timeout: float = 60) -> Any:
    """Run ``script`` with ``argument`` as its one JSON argument (in its folder, so its
    packages resolve); the JSON it prints on stdout. Fails the test when it exits non-zero."""
    done = subprocess.run(
        [node, str(script), json.dumps(argument)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=script.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def node_with_pusher() -> str:
    """``node``, with ``tests/pusher`` installed."""
    return node_with(PUSHER_DIR, "pusher-js")


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
