"""Azurite (the Azure Blob emulator) as a child process for tests.

Sync on purpose: a session-scoped pytest fixture has no event loop to await in.
"""

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = PROJECT_ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds: a cold start takes about 5 s
STOP_TIMEOUT = 10.0  # seconds to wait after SIGTERM before SIGKILL
READY_PATTERN = re.compile(r"successfully listens on http://127\.0\.0\.1:(\d+)")

ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class AzuriteError(RuntimeError):
    pass


class Azurite:
    """One in-memory Azurite blob service on a free loopback port."""

    def __init__(self, binary: str | os.PathLike | None = None):
        self.binary = Path(binary or os.environ.get("AZURITE_BIN") or DEFAULT_BIN)
        self.port: int | None = None
        self.output: list[str] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        if self.port is None:
            raise AzuriteError("Azurite is not running")
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={ACCOUNT_NAME};"
            f"AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self) -> "Azurite":
        if self._process is not None:
            raise AzuriteError("Azurite is already started")
        if not self.binary.exists():
            raise AzuriteError(f"Azurite not found at {self.binary} (set AZURITE_BIN)")
        command = [
            str(self.binary),
            "--blobHost", HOST,
            "--blobPort", "0",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]
        # A new session is a new process group: stop() kills node and anything it spawned.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain_output, name="azurite-output", daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or self.port is None:
            output = "".join(self.output)
            self.stop()
            raise AzuriteError(f"Azurite did not become ready within {START_TIMEOUT} s:\n{output}")
        return self

    def _drain_output(self) -> None:
        """Read stdout to the end so a chatty Azurite never blocks on a full pipe."""
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self.output.append(line)
            match = READY_PATTERN.search(line)
            if match and not self._ready.is_set():
                self.port = int(match.group(1))
                self._ready.set()
        # The process ended: wake start() so it fails now instead of after the timeout.
        self._ready.set()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        # Also reaches anything node left behind in the group once node itself has gone.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
        self.port = None

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
