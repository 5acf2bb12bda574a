"""The HTTP server's gate: every request authenticated (when a token or a password is set), and its body bounded.

Accepted credentials, each compared in constant time: `Authorization: Bearer <token>` (--access-token),
`Authorization: Basic user:password` (--api-auth, as A1111), and, so a browser's own login prompt works for the
page, Basic with any user name and the access token as password. Refusals are 401 with a `WWW-Authenticate`
header, before the request's body is read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

from imaginairy.server.auth import check_credentials_config

REALM = 'Basic realm="imaginairy", charset="UTF-8"'


def is_authorized(header: bytes | None, access_token: str | None, api_auth: str | None) -> bool:
    if header is None:
        return False
    scheme, _, credentials = header.decode("latin-1").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and access_token:
        return hmac.compare_digest(credentials.strip().encode(), access_token.encode())
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        accepted = hmac.compare_digest(decoded, api_auth.encode()) if api_auth else False
        if access_token:
            password = decoded.partition(b":")[2]
            accepted = hmac.compare_digest(password, access_token.encode()) or accepted
        return accepted
    return False


class Guard:
    """ASGI middleware: authentication, then the body read whole up to `max_body_bytes` (413 beyond)."""

    def __init__(self, app, *, access_token: str | None, api_auth: str | None, max_body_bytes: int):
        check_credentials_config(access_token, api_auth)
        self.app = app
        self.access_token = access_token
        self.api_auth = api_auth
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        open_preflight = scope["method"] == "OPTIONS" and b"access-control-request-method" in headers
        if (self.access_token or self.api_auth) and not open_preflight:
            if not is_authorized(headers.get(b"authorization"), self.access_token, self.api_auth):
                return await answer(send, 401, "Missing or wrong credentials: send `Authorization: Bearer <token>` "
                                               "(or HTTP Basic).", [(b"www-authenticate", REALM.encode())])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await answer(send, 413, f"The request body is larger than this server accepts "
                                           f"({self.max_body_bytes} bytes).")
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await answer(send, 413, f"The request body is larger than this server accepts "
                                               f"({self.max_body_bytes} bytes).")
            body.append(chunk)
            more = message.get("more_body", False)
        whole = b"".join(body)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
