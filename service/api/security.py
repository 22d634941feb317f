"""API keys and their roles on the /v1 routes: header `X-API-Key`, compared in constant time.

One key, one role. The line key (BRIDGENET_API_KEY) predicts; the results key (BRIDGENET_RESULTS_KEY)
reads the audit trail; the admin key (BRIDGENET_ADMIN_KEY, its own header) is checked by the admin routes.
Each route names the roles it takes. While neither the line nor the results key is configured
(development) the routes are open; once one is, a route takes only its roles' keys, and a role whose key
is unset cannot be used.
"""

from __future__ import annotations

import hmac
from enum import StrEnum
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from service.api.deps import get_state
from service.api.errors import ApiError, UnauthorizedError
from service.config import Settings, env_name

API_KEY_HEADER = "X-API-Key"

# One header, two security schemes in the contract: each route says which key it takes (a route that
# takes either lists both, as alternatives). auto_error=False: a missing key gets our error body.
_line_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="LineKey",
    auto_error=False,
    description="The line key (BRIDGENET_API_KEY): predictions. Required once a key is configured.",
)
_results_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ResultsKey",
    auto_error=False,
    description="The read-only results key (BRIDGENET_RESULTS_KEY): /v1/results*. Required once a key is configured.",
)


class Role(StrEnum):
    LINE = "line"
    RESULTS = "results"


_ROLE_SETTING = {Role.LINE: "api_key", Role.RESULTS: "results_key"}
_ROLE_USE = {Role.LINE: "predictions", Role.RESULTS: "reading results"}


class WrongRoleError(ApiError):
    status, code = 403, "key_not_allowed"


def _same(key: str, secret: SecretStr) -> bool:
    # compare_digest on bytes: its time does not depend on where the first differing byte is.
    return hmac.compare_digest(key.encode("utf-8"), secret.get_secret_value().encode("utf-8"))


def check_api_key(secret: SecretStr | None, key: str | None, header: str = API_KEY_HEADER) -> None:
    """Pass when no key is configured (`secret` None) or `key` matches it; raise UnauthorizedError (401)."""
    if secret is None:
        return
    if key is None:
        raise UnauthorizedError(f"missing {header} header; this service requires an API key")
    if not _same(key, secret):
        raise UnauthorizedError(f"the {header} header does not match the configured key")


def keys_configured(settings: Settings) -> bool:
    return settings.api_key is not None or settings.results_key is not None


def key_role(settings: Settings, key: str) -> Role | None:
    """The role whose configured key `key` is; None for no configured key. Every role is compared, so
    the time taken does not tell which one matched."""
    found = None
    for role, name in _ROLE_SETTING.items():
        secret: SecretStr | None = getattr(settings, name)
        if secret is not None and _same(key, secret):
            found = role
    return found


def check_role(settings: Settings, key: str | None, allowed: tuple[Role, ...]) -> None:
    """Pass when the routes are open or `key` is the key of one of `allowed`; 401 for a missing or unknown
    key, 403 for a good key of another role (a client given the wrong key learns which one it needs)."""
    if not keys_configured(settings):
        return
    wanted = " or ".join(f"{env_name(_ROLE_SETTING[r])} ({_ROLE_USE[r]})" for r in allowed)
    if key is None:
        raise UnauthorizedError(f"missing {API_KEY_HEADER} header; this route takes {wanted}")
    role = key_role(settings, key)
    if role is None:
        raise UnauthorizedError(f"the {API_KEY_HEADER} header is not a key of this service; this route takes {wanted}")
    if role not in allowed:
        raise WrongRoleError(f"the {role.value} key may not use this route; it takes {wanted}")


# The route dependencies. The line also reads what it needs to call predict (models, contract, its
# counters when /metrics shares the API port); the results reader reads the records and nothing else.


async def require_line_key(request: Request, key: Annotated[str | None, Security(_line_key_header)]) -> None:
    check_role(get_state(request).settings, key, (Role.LINE,))


async def require_results_key(request: Request, key: Annotated[str | None, Security(_results_key_header)]) -> None:
    check_role(get_state(request).settings, key, (Role.RESULTS,))


async def require_any_key(
    request: Request,
    key: Annotated[str | None, Security(_line_key_header)],
    _same_header: Annotated[str | None, Security(_results_key_header)],  # lists the second scheme
) -> None:
    check_role(get_state(request).settings, key, (Role.LINE, Role.RESULTS))
