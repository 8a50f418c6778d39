"""Dependencies routes declare through `Annotated` aliases: the services and the calling tenant."""

from __future__ import annotations

from typing import Annotated

from bson import ObjectId
from bson.errors import InvalidId
from fastapi import Depends, Header, Request

from server.errors import ApiError
from server.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_tenant(services: ServicesDep, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The tenant an `X-API-Key` belongs to; 401 for a missing or unknown key."""
    if not x_api_key:
        raise ApiError(401, "missing_api_key", "send your API key in the X-API-Key header")
    tenant_id = await services.tenants.tenant_for_key(x_api_key)
    if tenant_id is None:
        raise ApiError(401, "invalid_api_key", "the API key is not valid")
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant)]


def require_tenant(caller: str, path_tenant: str) -> None:
    """A key may act only on its own tenant's path."""
    if caller != path_tenant:
        raise ApiError(403, "forbidden", "this API key does not belong to that tenant")


def parse_object_id(value: str, what: str) -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        raise ApiError(400, f"invalid_{what}", f"{what} must be a 24-character hex id") from None
