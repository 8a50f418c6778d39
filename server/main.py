"""The FastAPI app: routes, JSON errors, and a lifespan that opens the clients and starts a worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ApiError
from server.routes import health, jobs, metrics, reports
from server.services import Services, open_services
from server.settings import Settings

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 1024 * 1024  # bytes allowed beyond the files themselves in one upload


def error_response(status_code: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse(
        status_code=status_code,
        content={"success": False, "error": {"code": code, "message": message, **extra}},
    )


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal is JSON of one shape; an unexpected error is a logged 500 without details."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")}
            for err in exc.errors()
        ]
        return error_response(422, "invalid_request", "the request is not valid", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(500, "internal_error", "internal error")


def add_body_limit(app: FastAPI, max_body_bytes: int) -> None:
    """Refuse an oversized upload from its Content-Length before the body is read and spooled."""

    @app.middleware("http")
    async def body_limit(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > max_body_bytes:
            return error_response(413, "request_too_large", f"the request is larger than {max_body_bytes} bytes")
        return await call_next(request)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services: Services = await open_services(settings)
        app.state.services = services
        worker_task = None
        if settings.run_worker:
            worker = services.new_worker()
            worker_task = asyncio.create_task(worker.run(), name="parsing-worker")
        try:
            yield
        finally:
            for worker in services.workers:
                await worker.stop()
            if worker_task is not None:
                await worker_task
            await services.close()

    app = FastAPI(
        title="Report parsing service",
        version="0.1.0",
        description="Upload medical reports; get structured data by polling or webhook.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    add_error_handlers(app)
    add_body_limit(app, settings.max_file_size_bytes * settings.max_files_per_upload + MULTIPART_OVERHEAD)
    app.include_router(reports.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app
