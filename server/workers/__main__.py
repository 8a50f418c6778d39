"""`python -m server.workers`: a worker process without the API, for scaling out on more machines.

It needs MONGODB_URL: the embedded database lives inside one process and cannot be shared.
"""

import asyncio
import logging
import signal
import sys

from server.logs import configure_logging
from server.services import open_services
from server.settings import Settings
from server.workers.runner import run_until_stopped

log = logging.getLogger("server.worker")


async def serve(settings: Settings) -> None:
    services = await open_services(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_until_stopped(services.new_worker(), stop)
    finally:
        await services.close()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.mongodb_url:
        log.error("a separate worker process needs MONGODB_URL: the embedded database is per process")
        sys.exit(2)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
