"""`python -m server`: the API on PORT with a parsing worker in its lifespan."""

import uvicorn

from server.logs import configure_logging
from server.main import create_app
from server.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
