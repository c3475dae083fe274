"""The API key check."""

import secrets

from tuneforge.serve.errors import APIError


class RequireKey:
    """ASGI middleware: /v1/ paths need `Authorization: Bearer <key>`. Plain ASGI rather than FastAPI's
    @middleware("http"), which wraps the request stream so that an endpoint cannot see a disconnect."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                error = APIError(401, "Incorrect or missing API key: send the header `Authorization: Bearer <key>` "
                                      "with the key the server was started with.", code="invalid_api_key",
                                 kind="authentication_error")
                return await error.response()(scope, receive, send)
        await self.app(scope, receive, send)
