"""A real `mlflow server` on 127.0.0.1 for the tests, which they may kill (SIGKILL, as a crashed
host) and start again on the same port and store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class MlflowServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1",  # one process: 2 cores here
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self
            except OSError:
                assert self.process.poll() is None, "mlflow server exited at start"
                assert time.monotonic() < deadline, "mlflow server did not answer in time"
                time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the server and its workers (its process group), as a host that goes away."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
