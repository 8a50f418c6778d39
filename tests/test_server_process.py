"""`python -m server` as a user starts it: embedded defaults, the guide's log line, the guide's example key."""

from __future__ import annotations

import signal
import time

import requests

from tests.support import documents
from tests.support.server_process import ServerProcess

JOB_TIMEOUT = 20.0  # seconds


def test_embedded_defaults_serve_the_guide_example(tmp_path):
    server = ServerProcess(tmp_path, LOCAL_BLOB_DIR=str(tmp_path / "blobs"))
    with server:
        server.wait_for_line("INFO server.worker: Parsing worker started")
        server.wait_for_line("embedded in-process database")

        response = requests.post(
            f"{server.url}/api/v1/tenants/tenant-001/projects/project-001/reports",
            files={"file": ("report.pdf", documents.pdf_bytes("Hemoglobin 13.5 g/dL"))},
            headers={"X-API-Key": "your-key"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            status = requests.get(
                f"{server.url}/api/v1/job/status/{job_id}", headers={"X-API-Key": "your-key"}, timeout=10
            ).json()
            if status["status"] in ("completed", "failed"):
                break
            time.sleep(0.05)
        assert status["status"] == "completed", status
        assert status["parsed_data"]["source"] == "local_text_extraction"
        assert "Hemoglobin 13.5 g/dL" in status["parsed_data"]["documents"][0]["text"]
        returncode = server.stop()

    output = "".join(server.lines)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as its docs describe.
    assert returncode in (0, -signal.SIGTERM), output
    assert "Parsing worker stopped" in output and "Application shutdown complete" in output
    # Report text never reaches the logs.
    assert "Hemoglobin" not in output
