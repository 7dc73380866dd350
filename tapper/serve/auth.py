"""API keys: random tokens handed out once; the store keeps only their SHA-256.

A plain (unsalted) hash is enough here because keys are 256-bit random tokens, not passwords: there is
nothing to brute-force, and the hash doubles as the lookup key.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tapper.store import UserStore

KEY_PREFIX = "tpr_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(store: UserStore, tenant: str) -> str:
    """Store a new key's hash for `tenant` and return the key itself (shown once, never stored)."""
    if not tenant.strip():
        raise ValueError("tenant name must not be empty")
    key = new_api_key()
    store.add_api_key(tenant, hash_api_key(key))
    return key


def presented_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


# The two ways to present a key, declared as OpenAPI security schemes so that /docs has an Authorize button.
# auto_error=False: require_tenant answers a missing or wrong key itself, with the API's own 401 message.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer",
    description="An API key from `tapper serve add-key`, sent as `Authorization: Bearer <key>`.",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey",
    description="The same API key in an `X-API-Key` header (instead of the bearer header).",
)


def require_tenant(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
    _header: Annotated[str | None, Security(api_key_scheme)] = None,
) -> str:
    """FastAPI dependency: the caller's tenant, or 401. The security parameters only declare the schemes in
    the OpenAPI document; the key is read by `presented_key` (bearer first, then X-API-Key)."""
    key = presented_key(request)
    store: UserStore = request.app.state.store
    tenant = store.tenant_for_key(hash_api_key(key)) if key else None
    if tenant is None:
        problem = "missing API key" if key is None else "invalid API key"
        raise HTTPException(
            status_code=401,
            detail=f"{problem}: send 'Authorization: Bearer <key>' (create keys with `tapper serve add-key`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant
