"""Measure the service against the migration guide's promises, each figure beside a baseline from the same run.

`python -m server` runs as a child process on the embedded defaults (the in-process mongomock
database) with Azurite for blob storage and a fake Gemini of fixed latency; the benchmark talks
to it over HTTP only and reads the server's memory from /proc. Each phase starts a fresh server,
so every figure is measured on a collection of known size, printed beside it.

The embedded database scans whole collections, so its cost grows with the collection. Its share
of each figure comes from the server's own `report_parser_database_operation_seconds` metric:
with mongomock a database call blocks the event loop, so that time is the database's, not the
service's.

    .venv/bin/python scripts/benchmark.py      # about 1-2 minutes on 2 cores; gives up after TIME_LIMIT
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from azure.storage.blob.aio import BlobServiceClient
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.settings import Settings  # noqa: E402
from tests.support import documents  # noqa: E402 - the test harness: sample PDFs, Azurite, fake Gemini
from tests.support.azurite import Azurite  # noqa: E402
from tests.support.fake_gemini import FakeGemini  # noqa: E402

TIME_LIMIT = 290.0  # seconds for the whole run
START_TIMEOUT = 30.0  # seconds for a server to answer /health/ready
FINISH_TIMEOUT = 60.0  # seconds for a phase's jobs to finish
FINISH_POLL = 1.0  # seconds between scrapes while waiting: each one counts the collection on the server
GEMINI_LATENCY = 0.2  # seconds the fake Gemini takes per request
POLLING_INTERVAL = 120.0  # seconds: the service's default POLLING_INTERVAL_SECONDS, which the guide ships
GUIDE_BATCH = 10  # jobs per cycle in the guide's design, processed one at a time
TENANT, API_KEY = "bench", "bench-key"
UPLOAD_PATH = f"/api/v1/tenants/{TENANT}/projects/benchmark/reports"
HEADERS = {"X-API-Key": API_KEY}

UPLOADS = {"100 KB": (100 * 1024, 100), "5 MB": (5 * 1024 * 1024, 30)}  # label: (bytes, samples)
WARMUP = 3  # requests of each kind before measuring
STATUS_SAMPLES = 500
STATUS_LARGE_COLLECTION = 1000  # jobs: status is measured again at this size
SEED_PARALLEL = 8  # concurrent uploads when filling a collection
QUEUE_WAIT_JOBS = 60
QUEUE_WAIT_SPACING = 0.05  # seconds between uploads: 20/s keeps the default 8 slots from filling up
THROUGHPUT_JOBS = {1: 20, 8: 160, 32: 320}  # WORKER_CONCURRENCY: jobs (4, 4 and 2 s of ideal work)
MEMORY_FILE_BYTES = 50 * 1024 * 1024
MEMORY_MAX_FILE_MB = 60  # MAX_FILE_SIZE_MB for that phase only, so a 50 MB file is accepted
SCRAPE_EXCLUDED = {"parsing_jobs.aggregate"}  # the count /metrics itself runs


# --- numbers --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Row:
    figure: str
    measured: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    database: str = ""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def share(part: float, whole: float) -> str:
    return f"{ms(part)} ({part / whole:.0%})" if whole > 0 else ms(part)


def print_table(rows: list[Row]) -> None:
    header = ["figure", "measured", "baseline", "ratio", "target", "met", "database share"]
    cells = [header] + [
        [r.figure, r.measured, r.baseline, r.ratio, r.target, {True: "yes", False: "NO", None: ""}[r.met], r.database]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


# --- the fake Gemini, on a loop of its own so the client's timings do not wait for it ----------


class GeminiThread:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.loop = asyncio.new_event_loop()
        self.fake: FakeGemini | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-gemini", daemon=True)

    def __enter__(self) -> GeminiThread:
        self.thread.start()
        self.fake = self._run(self._start())
        return self

    async def _start(self) -> FakeGemini:
        return await FakeGemini(latency=self.latency).start()

    def _run(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def call(self, function: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(function)

    @property
    def requests(self) -> int:
        return len(self.fake.requests)

    def __exit__(self, *exc_info: Any) -> None:
        self._run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# --- the server under test ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m server` with the embedded database, Azurite and the fake Gemini; logs to a file."""

    def __init__(self, name: str, workdir: Path, azurite: Azurite, gemini_url: str, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir / name
        self.workdir.mkdir()
        settings_names = {name.upper() for name in Settings.model_fields}
        env = {k: v for k, v in os.environ.items() if k.upper() not in settings_names}  # only what is set here
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "API_KEYS": f"{TENANT}:{API_KEY}",
                "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
                "AZURE_CONTAINER_NAME": f"bench-{name}",
                "GEMINI_API_KEY": "benchmark",
                "GEMINI_BASE_URL": gemini_url,
                **settings,
            }
        )
        self.log = open(self.workdir / "server.log", "w")
        # cwd is an empty directory: no developer .env is read.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    async def ready(self, session: aiohttp.ClientSession) -> ServerProcess:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                async with session.get(f"{self.url}/health/ready") as response:
                    if response.status == 200:
                        return self
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"server not ready in {START_TIMEOUT} s; see {self.log.name}")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) in bytes."""
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> bool:
        """Set VmHWM back to the current RSS (Linux: clear_refs 5)."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# --- HTTP helpers -----------------------------------------------------------------------------


async def timed(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


async def upload(session: aiohttp.ClientSession, server: ServerProcess, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="report.pdf", content_type="application/pdf")
    async with session.post(f"{server.url}{UPLOAD_PATH}", data=form, headers=HEADERS) as response:
        body = await response.json()
        if response.status != 202:
            raise RuntimeError(f"upload answered {response.status}: {body}")
        return body["job_id"]


async def upload_many(session: aiohttp.ClientSession, server: ServerProcess, data: bytes, count: int) -> list[str]:
    gate = asyncio.Semaphore(SEED_PARALLEL)

    async def one() -> str:
        async with gate:
            return await upload(session, server, data)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, headers=HEADERS) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url} answered {response.status}")
        return await response.json()


async def statuses(session: aiohttp.ClientSession, server: ServerProcess, job_ids: list[str]) -> list[dict[str, Any]]:
    return [await get_json(session, f"{server.url}/api/v1/job/status/{job_id}") for job_id in job_ids]


class Scrape:
    """One `GET /metrics`, with the sums a phase needs."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def database(self) -> dict[str, tuple[float, float]]:
        """operation: (calls, seconds), without the counts the scrapes themselves made."""
        name = "report_parser_database_operation_seconds"
        ops = {s.labels["operation"] for s in self.samples if s.name == f"{name}_count"} - SCRAPE_EXCLUDED
        return {op: (self.value(f"{name}_count", operation=op), self.value(f"{name}_sum", operation=op)) for op in ops}

    def database_since(self, earlier: Scrape) -> dict[str, tuple[float, float]]:
        before = earlier.database()
        return {
            op: (calls - before.get(op, (0, 0))[0], seconds - before.get(op, (0, 0))[1])
            for op, (calls, seconds) in self.database().items()
        }

    def database_seconds_since(self, earlier: Scrape) -> float:
        return sum(seconds for _, seconds in self.database_since(earlier).values())


async def scrape(session: aiohttp.ClientSession, server: ServerProcess) -> Scrape:
    async with session.get(f"{server.url}/metrics") as response:
        return Scrape(await response.text())


async def wait_finished(session: aiohttp.ClientSession, server: ServerProcess, count: int) -> Scrape:
    deadline = time.monotonic() + FINISH_TIMEOUT
    while time.monotonic() < deadline:
        now = await scrape(session, server)
        if now.value("report_parser_jobs_finished_total") >= count:
            return now
        await asyncio.sleep(FINISH_POLL)
    raise TimeoutError(f"{count} jobs did not finish in {FINISH_TIMEOUT} s")


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


# --- phases -----------------------------------------------------------------------------------


async def measure_uploads(
    session: aiohttp.ClientSession, server: ServerProcess, azurite: Azurite
) -> tuple[list[Row], list[str]]:
    """Each service upload is paired with a bare blob upload of the same bytes, alternating."""
    rows, job_ids = [], []
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as blob_service:
        container = blob_service.get_container_client("bench-baseline")
        await container.create_container()
        for label, (size, samples) in UPLOADS.items():
            pdf = documents.large_pdf_bytes(size)
            service_times, bare_times = [], []
            before = await scrape(session, server)
            for index in range(WARMUP + samples):
                bare = await timed(container.upload_blob(f"{label}/{index}.pdf", pdf, overwrite=True))
                started = time.perf_counter()
                job_ids.append(await upload(session, server, pdf))
                if index >= WARMUP:
                    service_times.append(time.perf_counter() - started)
                    bare_times.append(bare)
            after = await scrape(session, server)
            database = after.database_seconds_since(before) / (WARMUP + samples)
            for name, q in (("p50", 0.5), ("p99", 0.99)):
                value, baseline = percentile(service_times, q), percentile(bare_times, q)
                rows.append(
                    Row(
                        f"upload {label} {name} (n={samples}, {len(job_ids)} jobs)",
                        ms(value),
                        f"{ms(baseline)} bare blob upload",
                        f"{value / baseline:.2f}x",
                        "<= 1.5x blob" if name == "p50" else "",
                        value / baseline <= 1.5 if name == "p50" else None,
                        share(database, value),
                    )
                )
    return rows, job_ids


async def measure_status(session: aiohttp.ClientSession, server: ServerProcess, job_ids: list[str]) -> list[Row]:
    """Status of random jobs, alternating with `GET /health/live`: the same HTTP stack doing nothing."""
    rng = random.Random(7)
    status_times, live_times = [], []
    before = await scrape(session, server)
    for index in range(WARMUP + STATUS_SAMPLES):
        url = f"{server.url}/api/v1/job/status/{rng.choice(job_ids)}"
        live = await timed(get_json(session, f"{server.url}/health/live"))
        status = await timed(get_json(session, url))
        if index >= WARMUP:
            live_times.append(live)
            status_times.append(status)
    after = await scrape(session, server)
    database = after.database_seconds_since(before) / (WARMUP + STATUS_SAMPLES)
    rows = []
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        value, baseline = percentile(status_times, q), percentile(live_times, q)
        rows.append(
            Row(
                f"status {name} (n={STATUS_SAMPLES}, {len(job_ids)} jobs)",
                ms(value),
                f"{ms(baseline)} GET /health/live",
                f"{value / baseline:.2f}x",
                "< 10 ms" if name == "p99" else "",
                value < 0.010 if name == "p99" else None,
                share(database, value),
            )
        )
    return rows


async def measure_queue_wait(session: aiohttp.ClientSession, server: ServerProcess) -> list[Row]:
    """Uploads at a steady pace to an idle worker; wait = created_at to started_at as the API reports them."""
    pdf = documents.pdf_bytes()
    job_ids = []
    before = await scrape(session, server)
    for _ in range(QUEUE_WAIT_JOBS):
        job_ids.append(await upload(session, server, pdf))
        await asyncio.sleep(QUEUE_WAIT_SPACING)
    after = await wait_finished(session, server, QUEUE_WAIT_JOBS)
    finished = await statuses(session, server, job_ids)
    waits = [seconds_between(s["created_at"], s["started_at"]) for s in finished]
    totals = [seconds_between(s["created_at"], s["completed_at"]) for s in finished]
    calls, seconds = after.database_since(before).get("parsing_jobs.find_one_and_update", (0, 0))
    claim = seconds / max(1, calls)
    rows = []
    # The guide's design: a job waits for the next of its 120 s polls, uniformly anywhere in the cycle.
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        value, baseline = percentile(waits, q), POLLING_INTERVAL * q
        rows.append(
            Row(
                f"queue wait {name} (n={QUEUE_WAIT_JOBS}, {QUEUE_WAIT_JOBS} jobs)",
                ms(value),
                f"{ms(baseline)} guide's {POLLING_INTERVAL:g} s poll",
                f"{value / baseline:.5f}x",
                "< 50 ms" if name == "p50" else "",
                value < 0.050 if name == "p50" else None,
                f"{share(claim, value)} per claim (mean find_one_and_update)",
            )
        )
    # Upload to completed as the API reports it; nothing can beat the model's own latency.
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(totals, q)
        rows.append(
            Row(
                f"upload to completed {name} (n={QUEUE_WAIT_JOBS})",
                ms(value),
                f"{ms(GEMINI_LATENCY)} Gemini latency",
                f"{value / GEMINI_LATENCY:.2f}x",
                "",
                None,
                "",
            )
        )
    return rows


async def measure_throughput(
    session: aiohttp.ClientSession, workdir: Path, azurite: Azurite, gemini: GeminiThread
) -> tuple[list[Row], dict[str, tuple[float, float]]]:
    """Per concurrency: queue the jobs behind a held Gemini, release it, time until the last completes."""
    rows, breakdown = [], {}
    pdf = documents.pdf_bytes()
    guide = GUIDE_BATCH / max(POLLING_INTERVAL, GUIDE_BATCH * GEMINI_LATENCY)
    for concurrency, count in THROUGHPUT_JOBS.items():
        name, url = f"throughput-{concurrency}", gemini.fake.base_url
        server = ServerProcess(name, workdir, azurite, url, WORKER_CONCURRENCY=str(concurrency))
        try:
            await server.ready(session)
            gemini.call(gemini.fake.hold)
            arrived = gemini.requests
            job_ids = await upload_many(session, server, pdf, count)
            while gemini.requests < arrived + min(concurrency, count):
                await asyncio.sleep(0.02)
            before = await scrape(session, server)
            cpu_before = server.cpu_seconds()
            released = time.time()
            gemini.call(gemini.fake.release)
            after = await wait_finished(session, server, count)
            cpu = server.cpu_seconds() - cpu_before
            busy = cpu / (time.time() - released)  # of one core; the rest of the time it waited or was not scheduled
            finished = [datetime.fromisoformat(s["completed_at"]) for s in await statuses(session, server, job_ids)]
            elapsed = max(finished).timestamp() - released
            database = after.database_seconds_since(before)
            if concurrency == max(THROUGHPUT_JOBS):
                breakdown = after.database_since(before)
        finally:
            server.stop()
        rate, ideal = count / elapsed, concurrency / GEMINI_LATENCY
        rows.append(
            Row(
                f"throughput c={concurrency} ({count} jobs)",
                f"{rate:.1f} jobs/s",
                f"{ideal:.1f} jobs/s ideal",
                f"{rate / ideal:.2f}",
                ">= 0.9 ideal" if concurrency == 32 else "",
                rate / ideal >= 0.9 if concurrency == 32 else None,
                f"{share(database, elapsed)} of {elapsed:.2f} s; server CPU {ms(cpu / count)}/job, busy {busy:.0%}",
            )
        )
        rows.append(Row("", "", f"{guide:.3f} jobs/s guide's design", f"{rate / guide:.0f}x"))
    return rows, breakdown


async def measure_memory(session: aiohttp.ClientSession, server: ServerProcess) -> list[Row]:
    """Peak RSS of the server while it takes one 50 MB upload, from a peak reset just before."""
    await upload_many(session, server, documents.large_pdf_bytes(1024 * 1024), 2)  # warm the code paths
    pdf = documents.large_pdf_bytes(MEMORY_FILE_BYTES)
    exact = server.reset_peak()
    start = server.memory()
    seconds = await timed(upload(session, server, pdf))
    end = server.memory()
    growth = end["VmHWM"] - (start["VmRSS"] if exact else start["VmHWM"])
    return [
        Row(
            f"memory growth, {MEMORY_FILE_BYTES >> 20} MB upload ({ms(seconds)})",
            f"{growth / 2**20:.1f} MiB",
            f"{MEMORY_FILE_BYTES / 2**20:.0f} MiB file",
            f"{growth / MEMORY_FILE_BYTES:.2f}x",
            "< 1x file",
            growth < MEMORY_FILE_BYTES,
            "" if exact else "peak not reset: growth over the earlier peak",
        )
    ]


# --- the run ----------------------------------------------------------------------------------


async def run(workdir: Path, azurite: Azurite, gemini: GeminiThread) -> None:
    rows: list[Row] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Upload and status: no worker, so parsing never competes with the requests measured.
        server = ServerProcess("intake", workdir, azurite, gemini.fake.base_url, RUN_WORKER="false")
        try:
            await server.ready(session)
            upload_rows, job_ids = await measure_uploads(session, server, azurite)
            rows += upload_rows
            rows += await measure_status(session, server, job_ids)
            pdf = documents.pdf_bytes()
            job_ids += await upload_many(session, server, pdf, STATUS_LARGE_COLLECTION - len(job_ids))
            rows += await measure_status(session, server, job_ids)
        finally:
            server.stop()

        server = ServerProcess("queue", workdir, azurite, gemini.fake.base_url)  # every default, worker on
        try:
            await server.ready(session)
            rows += await measure_queue_wait(session, server)
        finally:
            server.stop()

        throughput_rows, breakdown = await measure_throughput(session, workdir, azurite, gemini)
        rows += throughput_rows

        limits = {"RUN_WORKER": "false", "MAX_FILE_SIZE_MB": str(MEMORY_MAX_FILE_MB)}
        server = ServerProcess("memory", workdir, azurite, gemini.fake.base_url, **limits)
        try:
            await server.ready(session)
            rows += await measure_memory(session, server)
        finally:
            server.stop()

    print()
    print_table(rows)
    print()
    print(f"Database calls during throughput c={max(THROUGHPUT_JOBS)} ({THROUGHPUT_JOBS[max(THROUGHPUT_JOBS)]} jobs):")
    for op, (calls, seconds) in sorted(breakdown.items(), key=lambda item: -item[1][1]):
        if calls:
            print(f"  {op:36} {int(calls):6d} calls  {seconds * 1000 / calls:7.2f} ms each  {seconds:6.2f} s")


def load_average() -> str:
    """Other processes on the machine show up in every figure: say how busy it was."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    print(
        f"Benchmark: python {platform.python_version()}, {os.cpu_count()} CPUs, embedded database (mongomock), "
        f"Azurite, fake Gemini {GEMINI_LATENCY * 1000:.0f} ms; load average {load_average()} before the run"
    )
    print(
        "Each phase runs on a fresh server; 'N jobs' is the size of parsing_jobs when the figure was taken. "
        "Upload and status run with RUN_WORKER=false; the memory phase with "
        f"MAX_FILE_SIZE_MB={MEMORY_MAX_FILE_MB}; everything else on the defaults."
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as workdir, Azurite() as azurite, GeminiThread(
        GEMINI_LATENCY
    ) as gemini:
        try:
            asyncio.run(asyncio.wait_for(run(Path(workdir), azurite, gemini), TIME_LIMIT))
        except Exception:
            for log in sorted(Path(workdir).glob("*/server.log")):
                print(f"--- {log.parent.name} server log (last lines) ---", file=sys.stderr)
                print("".join(log.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
            raise
    print(f"\nTotal time {time.monotonic() - started:.0f} s; load average {load_average()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
