"""Import the old `parsed_reports` into `parsing_jobs` as completed jobs (see server/migration.py).

Reads MONGODB_URL and MONGODB_DB like the service. Safe to stop at any moment and to run again:
every old report ends up as exactly one job, and `parsed_reports` is never written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from server.logs import configure_logging
from server.migration import DEFAULT_BATCH_SIZE, LegacyMigration, MigrationOptions, MigrationSummary
from server.services.database import Database, open_database
from server.settings import Settings

log = logging.getLogger("migrate_parsed_reports")

SHOWN_IDS = 10  # skipped ids printed per reason; --skipped-file gets them all


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="migrate_parsed_reports.py",
        description=__doc__.split("\n\n")[0],
        epilog="Connection: MONGODB_URL and MONGODB_DB, from the environment or .env, as for the service.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="read and check everything, count what would be imported, write nothing"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"old reports per bulk write (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--tenant", metavar="TENANT_ID", help="import only this tenant's old reports")
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="import only the first N old reports, in _id order"
    )
    parser.add_argument(
        "--skipped-file",
        type=Path,
        metavar="PATH",
        help="write the id and reason of every skipped old report here, one JSON object a line",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> MigrationOptions:
    return MigrationOptions(batch_size=args.batch_size, tenant_id=args.tenant, limit=args.limit, dry_run=args.dry_run)


def format_summary(summary: MigrationSummary) -> str:
    title = "Dry run (nothing written)" if summary.dry_run else "Migration"
    state = "finished" if summary.finished else "stopped before the end: run the same command again to resume"
    lines = [
        f"{title} {state}",
        f"  scanned          {summary.scanned}",
        f"  {'to import' if summary.dry_run else 'imported':<16} {summary.imported}",
        f"  already present  {summary.already_present}",
        f"  skipped          {summary.skipped_count}",
    ]
    for reason, ids in sorted(summary.skipped.items()):
        more = f" ... and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
        lines.append(f"    {reason}: {len(ids)} ({', '.join(ids[:SHOWN_IDS])}{more})")
    lines += [
        f"  elapsed          {summary.elapsed_seconds:.1f} s",
        f"  rate             {summary.docs_per_second:.0f} documents/s",
    ]
    return "\n".join(lines)


def write_skipped(summary: MigrationSummary, path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for reason, ids in sorted(summary.skipped.items()):
            for legacy_id in ids:
                out.write(json.dumps({"legacy_report_id": legacy_id, "reason": reason}) + "\n")


@contextlib.contextmanager
def logs_above_the_bar() -> Iterator[None]:
    """Inside `Progress`, sys.stderr is rich's proxy that prints above the bar: log through it."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    previous = [handler.setStream(sys.stderr) for handler in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous):
            if stream is not None:
                handler.setStream(stream)


async def run(migration: LegacyMigration, console: Console) -> MigrationSummary:
    """The migration, with a progress bar when `console` is a terminal."""
    if not console.is_terminal:
        return await migration.run()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} docs/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress, logs_above_the_bar():
        task = progress.add_task("parsed_reports", total=await migration.count(), rate=0.0)

        def advance(summary: MigrationSummary) -> None:
            progress.update(task, completed=summary.scanned, rate=summary.docs_per_second)

        migration.on_batch = advance
        return await migration.run()


async def run_then_close(migration: LegacyMigration, database: Database) -> None:
    try:
        await run(migration, Console(stderr=True))
    finally:
        await database.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.mongodb_url:
        print(
            "MONGODB_URL is not set: the embedded database lives inside one process and holds no old reports. "
            "Set MONGODB_URL (and MONGODB_DB) to the database that holds parsed_reports.",
            file=sys.stderr,
        )
        return 2
    database = open_database(settings.mongodb_url, settings.mongodb_db, timeout_ms=settings.mongodb_timeout_ms)
    migration = LegacyMigration(database, options_from(args))  # opening a client does no I/O yet
    code = 0
    try:
        asyncio.run(run_then_close(migration, database))
    except KeyboardInterrupt:
        code = 130
    except PyMongoError as exc:  # its message may quote documents: name the error only
        log.error("migration stopped by a database error", extra={"error": type(exc).__name__})
        code = 1
    print(format_summary(migration.summary))
    if args.skipped_file is not None:
        write_skipped(migration.summary, args.skipped_file)
    return code


if __name__ == "__main__":
    sys.exit(main())
