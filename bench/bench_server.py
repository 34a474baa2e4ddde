"""Shared by the benchmarks that serve the app with gunicorn: wait until it answers, or fail clearly."""
from __future__ import annotations

import http.client
import subprocess
import time


def wait_until_serving(process: subprocess.Popen, port: int, path: str = "/healthz",
                       ok_statuses: tuple[int, ...] = (200, 503), timeout: float = 60.0) -> subprocess.Popen:
    """Poll 127.0.0.1:`port``path` until it answers one of `ok_statuses` (503 from /healthz still means the
    web server is up); stop the process and raise if it exits or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status in ok_statuses:
                return process
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"gunicorn did not answer within {timeout:.0f} s")
