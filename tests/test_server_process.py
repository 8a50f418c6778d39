"""`python -m server` as a user starts it: embedded defaults, the guide's log line, the guide's example key."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.support import documents
from tests.support.webhook_receiver import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0  # seconds
JOB_TIMEOUT = 20.0  # seconds


def read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def wait_for_line(lines: queue.Queue, needle: str, seen: list[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"no {needle!r} in:\n{''.join(seen)}")


def test_embedded_defaults_serve_the_guide_example(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "AZURE_", "GEMINI_", "API_KEYS"))}
    env.update({"PORT": str(port), "HOST": "127.0.0.1", "LOCAL_BLOB_DIR": str(tmp_path / "blobs")})
    process = subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        wait_for_line(lines, "INFO server.worker: Parsing worker started", seen)
        wait_for_line(lines, "Uvicorn running on", seen)
        assert any("embedded in-process database" in line for line in seen)

        base = f"http://127.0.0.1:{port}"
        response = requests.post(
            f"{base}/api/v1/tenants/tenant-001/projects/project-001/reports",
            files={"file": ("report.pdf", documents.pdf_bytes("Hemoglobin 13.5 g/dL"))},
            headers={"X-API-Key": "your-key"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            status = requests.get(f"{base}/api/v1/job/status/{job_id}", headers={"X-API-Key": "your-key"}, timeout=10).json()
            if status["status"] in ("completed", "failed"):
                break
            time.sleep(0.05)
        assert status["status"] == "completed", status
        assert status["parsed_data"]["source"] == "local_text_extraction"
        assert "Hemoglobin 13.5 g/dL" in status["parsed_data"]["documents"][0]["text"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        finally:
            process.kill()
            process.stdout.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as its docs describe.
    assert process.returncode in (0, -signal.SIGTERM), "".join(seen + rest)
    assert any("Application shutdown complete" in line for line in rest)
    assert any("Parsing worker stopped" in line for line in rest)
    # Report text never reaches the logs.
    assert not any("Hemoglobin" in line for line in seen + rest)
