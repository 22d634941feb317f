"""Optional API key for the /v1 routes: header `X-API-Key`, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from service.api.deps import get_state
from service.api.errors import UnauthorizedError

API_KEY_HEADER = "X-API-Key"

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,  # a missing key must get our error body, not FastAPI's
    description="Required on /v1/* when the service is configured with BRIDGENET_API_KEY.",
)


def check_api_key(secret: SecretStr | None, key: str | None, header: str = API_KEY_HEADER) -> None:
    """Pass when no key is configured (`secret` None) or `key` matches it; raise UnauthorizedError (401)."""
    if secret is None:
        return
    if key is None:
        raise UnauthorizedError(f"missing {header} header; this service requires an API key")
    # compare_digest on bytes: its time does not depend on where the first differing byte is.
    if not hmac.compare_digest(key.encode("utf-8"), secret.get_secret_value().encode("utf-8")):
        raise UnauthorizedError(f"the {header} header does not match the configured key")


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """The route dependency: `check_api_key` against the service's configured key."""
    check_api_key(get_state(request).settings.api_key, key)
