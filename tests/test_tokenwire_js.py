"""``/tokenwire.js`` (the ES module client) in Node against a real server on 127.0.0.1:
start, follow with resume after dropped connections (faults injected in the fetch it is
given) and de-duplication by ``seq``, stop, abort, errors, conversations
(``tests/js/tokenwire_client.mjs``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import uvicorn_thread
from tokenwire import Settings, create_app

SCRIPT = Path(__file__).resolve().parent / "js" / "tokenwire_client.mjs"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOKENWIRE_FAKE_PROVIDER", "1")  # fake: models, wherever that is a setting
        settings = Settings(data_dir=tmp_path_factory.mktemp("js"), default_model="fake:echo")
    with uvicorn_thread(create_app(settings)) as url:
        yield url


def test_the_client_module_in_node(base: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, str(SCRIPT), base], capture_output=True, text=True, timeout=120, check=False
    )
    checks = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [c for c in checks if not c["ok"]]
    assert failed == [], "\n\n".join(c["error"] for c in failed) + done.stderr
    assert len(checks) == 6 and done.returncode == 0, done.stderr


def test_the_server_serves_the_modules(base: str) -> None:
    for name in ("tokenwire.js", "tokenwire-pusher.js", "markdown.js"):
        response = httpx.get(f"{base}/{name}", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/javascript")
    assert "export class TokenwireClient" in httpx.get(f"{base}/tokenwire.js", timeout=5).text
