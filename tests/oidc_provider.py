"""A small OpenID Connect provider for the single sign-on tests, run in a thread by the test.

It does what the proxy needs of a real one (an authorization-code flow with PKCE): an
authorize page with a login form, a token endpoint that checks the code, the client's secret
and the PKCE verifier and answers an RS256-signed id_token (with the nonce it was given), a
userinfo endpoint and the JWKS that verifies the signature. Users are the test's: username →
claims (email, email_verified, groups, ...).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "oaiproxy-test"
CLIENT_SECRET = "test-client-secret-0123456789"


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclasses.dataclass
class Grant:
    username: str
    nonce: str | None
    challenge: str | None
    redirect_uri: str


class Provider:
    def __init__(self, users: dict[str, dict[str, Any]]) -> None:
        self.users = users
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key"
        self.grants: dict[str, Grant] = {}
        self.tokens: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def settings(self) -> dict[str, str]:
        """The proxy's settings for this provider."""
        return {
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_AUTHORIZATION_ENDPOINT": f"{self.url}/authorize",
            "OIDC_OP_TOKEN_ENDPOINT": f"{self.url}/token",
            "OIDC_OP_USER_ENDPOINT": f"{self.url}/userinfo",
            "OIDC_OP_JWKS_ENDPOINT": f"{self.url}/jwks",
            "OIDC_STAFF_GROUP": "proxy-operators",
            "OIDC_PROVIDER_NAME": "Test IdP",
        }

    def __enter__(self) -> Provider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def id_token(self, username: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": username,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            **({"nonce": nonce} if nonce else {}),
            **self.users[username],
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "RS256",
                    "n": _b64(numbers.n),
                    "e": _b64(numbers.e),
                }
            ]
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str, **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: object) -> None:
                self._send(status, json.dumps(payload).encode(), "application/json")

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/authorize":
                    username = query.get("login_as")
                    if username is None:  # the login form, as an identity provider shows it
                        hidden = "".join(
                            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                            for k, v in query.items()
                        )
                        page = (
                            "<!doctype html><title>Test IdP</title><h1>Test IdP</h1>"
                            f'<form method="get" action="/authorize">{hidden}'
                            '<label>Username <input id="login_as" name="login_as"></label>'
                            '<button type="submit">Sign in</button></form>'
                        )
                        self._send(200, page.encode(), "text/html")
                        return
                    if username not in provider.users or query.get("client_id") != CLIENT_ID:
                        self._send(403, b"unknown user or client", "text/plain")
                        return
                    code = secrets.token_urlsafe(16)
                    provider.grants[code] = Grant(
                        username,
                        query.get("nonce"),
                        query.get("code_challenge"),
                        query["redirect_uri"],
                    )
                    back = (
                        query["redirect_uri"]
                        + "?"
                        + urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
                    )
                    self._send(302, b"", "text/plain", Location=back)
                elif url.path == "/jwks":
                    self._json(200, provider.jwks())
                elif url.path == "/userinfo":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    username = provider.tokens.get(token)
                    if username is None:
                        self._json(401, {"error": "invalid_token"})
                        return
                    self._json(200, {"sub": username, **provider.users[username]})
                else:
                    self._send(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                if self.path != "/token":
                    self._send(404, b"not found", "text/plain")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                grant = provider.grants.pop(form.get("code", ""), None)
                if (
                    grant is None
                    or form.get("client_id") != CLIENT_ID
                    or form.get("client_secret") != CLIENT_SECRET
                    or form.get("redirect_uri") != grant.redirect_uri
                ):
                    self._json(400, {"error": "invalid_grant"})
                    return
                if grant.challenge is not None:
                    verifier = form.get("code_verifier", "")
                    digest = hashlib.sha256(verifier.encode()).digest()
                    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                    if expected != grant.challenge:
                        self._json(400, {"error": "invalid_grant", "error_description": "PKCE"})
                        return
                access = secrets.token_urlsafe(24)
                provider.tokens[access] = grant.username
                self._json(
                    200,
                    {
                        "access_token": access,
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "id_token": provider.id_token(grant.username, grant.nonce),
                    },
                )

        return Handler
