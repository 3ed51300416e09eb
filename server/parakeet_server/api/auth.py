"""Bearer-token authentication: the token's source, and a grpc.aio interceptor checking it."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from parakeet_server.api.grpc_types import Handler, ServerInterceptor
from parakeet_server.api.handlers import OPEN_SERVICES, refusal, split_method

TOKEN_ENV = "PARAKEET_AUTH_TOKEN"


class TokenError(ValueError):
    """The token file cannot be used."""


def load_token(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The token from `path` (surrounding whitespace dropped), else from PARAKEET_AUTH_TOKEN.

    None when neither is set: authentication is off.
    """
    if path:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise TokenError(f"cannot read the auth token file {path}: {error}") from None
        if not token:
            raise TokenError(f"the auth token file {path} is empty")
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if any(character.isspace() for character in token) or not token.isprintable():
        raise TokenError("the auth token must be one word of printable characters")
    return token


class TokenAuthInterceptor(ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        service, rpc = split_method(handler_call_details.method)
        if service in OPEN_SERVICES:  # load balancers and tools reach them without a token
            return await continuation(handler_call_details)
        problem = self._problem(handler_call_details.invocation_metadata or ())
        handler = await continuation(handler_call_details)
        if problem is None or handler is None:
            return handler
        return refusal(handler, rpc, grpc.StatusCode.UNAUTHENTICATED, problem)

    def _problem(self, metadata: Any) -> str | None:
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            return (
                "this server requires a token: send the metadata 'authorization: Bearer <token>' "
                "(parakeet-client: --token-file or PARAKEET_AUTH_TOKEN)"
            )
        value = values[0]
        presented = value.encode() if isinstance(value, str) else bytes(value)
        if not presented.startswith(b"Bearer "):
            return "the authorization metadata must have the form 'Bearer <token>'"
        if not hmac.compare_digest(presented, self._expected):
            return (
                "the bearer token was not accepted; use the token the server was started with "
                "(its --auth-token-file or PARAKEET_AUTH_TOKEN)"
            )
        return None
