"""Real nginx in front of a server, for tests: the configuration of ``docs/deploy.md``
in a temporary prefix (its own pid file, logs and temp directories), nginx in the
foreground (``daemon off``) on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port, stop_process, wait_for_http


def nginx_binary() -> str:
    """The nginx executable; skips the test when it is absent and cannot be installed
    (``scripts/test`` installs Debian's package when it runs as root)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.geteuid() == 0:
            pytest.fail("nginx is missing: run scripts/test, or apt-get install -y nginx")
        pytest.skip("nginx is not installed and we are not root: sudo apt-get install nginx")
    return found


def nginx_conf(prefix: Path, listen: int, upstream: int, *, gzip: bool = True) -> str:
    """The ``docs/deploy.md`` configuration with the test's ports and paths.

    Deliberately *without* ``proxy_buffering off`` for the API: tokenwire's
    ``X-Accel-Buffering: no`` response header must turn buffering off by itself.
    ``gzip`` on compresses ``text/event-stream`` too, so a stream proves that
    compression does not hold events back. ``/short/`` is the same upstream with a
    read timeout shorter than the heartbeat interval (the control: nginx does cut).
    """
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    compress = (
        "gzip on; gzip_min_length 0; gzip_types text/event-stream application/json text/plain;"
        if gzip
        else "gzip off;"
    )
    return f"""
{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {compress}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream tokenwire {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen};

        location /app/ {{
            proxy_pass http://tokenwire;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
        }}
        location /short/ {{
            proxy_pass http://tokenwire/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 500ms;
        }}
        location / {{
            proxy_pass http://tokenwire;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $request_id;
            proxy_read_timeout 5s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front(upstream: str, prefix: Path, *, gzip: bool = True) -> Iterator[str]:
    """Run nginx proxying to ``upstream`` (``http://127.0.0.1:PORT``); yield its base URL."""
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    upstream_port = int(upstream.rsplit(":", 1)[1])
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, upstream_port, gzip=gzip))
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(base + "/healthz", timeout=30, proc=proc)
        except RuntimeError:
            assert proc.stderr is not None
            raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()}") from None
        yield base
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()
