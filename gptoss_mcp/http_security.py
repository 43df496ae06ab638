"""HTTP hardening: Origin/Host allow-lists (DNS rebinding) and static bearer-token auth.

The token check is an MCP SDK TokenVerifier, so the SDK's own middleware answers a missing or wrong
token with 401 and a `WWW-Authenticate` header pointing at the protected-resource metadata
(RFC 9728). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings

from gptoss_mcp.settings import ServerSettings

_LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
_LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


class StaticTokenVerifier:
    """Accepts exactly one bearer token, read from a file."""

    def __init__(self, token: str, resource: str):
        self._token, self._resource = token.encode(), resource

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        return AccessToken(token=token, client_id="bearer-token", scopes=[], resource=self._resource)


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace ignored).

    Raises:
        ValueError: unreadable or empty file (names the file, never the token).
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ValueError(f"cannot read --auth-token-file {path}: {e.strerror}") from None
    if not token:
        raise ValueError(f"--auth-token-file {path} is empty")
    return token


def base_url(settings: ServerSettings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def auth_options(settings: ServerSettings) -> dict[str, Any]:
    """MCPServer keyword arguments that require the bearer token, or none without a token file."""
    if settings.auth_token_file is None or settings.transport == "stdio":
        return {}
    resource = base_url(settings) + ("/sse" if settings.transport == "sse" else "/mcp")
    return {
        "token_verifier": StaticTokenVerifier(read_token(settings.auth_token_file), resource),
        # The server is its own token issuer: the token is provisioned out of band (the file).
        "auth": AuthSettings(issuer_url=base_url(settings), resource_server_url=resource,
                             validate_token_resource=True),
    }


def transport_security(settings: ServerSettings) -> TransportSecuritySettings:
    """Loopback names and origins, the bound host, plus --allow-host / --allow-origin entries."""
    hosts = list(_LOOPBACK_HOSTS)
    for host in (settings.host, *settings.allow_hosts):
        hosts += [host, f"{host}:*"]  # with and without an explicit port
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=[*_LOOPBACK_ORIGINS, *settings.allow_origins])
