"""`python -m server` as a user starts it, in a child process whose output is read line by line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.webhook_receiver import free_port

ROOT = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 30.0  # seconds to wait for an expected output line
STOP_TIMEOUT = 20.0  # seconds for a graceful stop after SIGTERM
# The child starts from the embedded defaults, whatever the developer's environment says.
CLEARED = ("MONGODB_", "AZURE_", "GEMINI_", "API_KEYS", "LOG_FORMAT")


class ServerProcess:
    def __init__(self, cwd: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
        env.update({"PYTHONPATH": str(ROOT), "HOST": "127.0.0.1", "PORT": str(self.port), **settings})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._queue: queue.Queue[str] = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in iter(self.process.stdout.readline, ""):
            self._queue.put(line)

    def wait_for_line(self, needle: str, timeout: float = LINE_TIMEOUT) -> str:
        """Blocks until a line containing `needle` is printed (or was already)."""
        for line in self.lines:
            if needle in line:
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} in:\n{''.join(self.lines)}")

    def wait_until_serving(self) -> ServerProcess:
        self.wait_for_line("Uvicorn running on")
        return self

    def stop(self) -> int:
        """SIGTERM, wait for the graceful stop, collect the remaining output; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            self.process.kill()
            self.process.wait()
        while True:  # the reader thread ends at EOF; take what it read
            try:
                self.lines.append(self._queue.get(timeout=1.0))
            except queue.Empty:
                break
        self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.wait_until_serving()

    def __exit__(self, *exc_info: Any) -> None:
        if self.process.returncode is None:
            self.stop()
