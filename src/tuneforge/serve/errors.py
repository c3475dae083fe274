"""One error shape for every answer that is not a success: OpenAI's {"error": {"message", "type",
"param", "code"}}, for tuneforge's own errors, Starlette's (404, 405), FastAPI's validation of query and
path parameters, pydantic's validation of bodies, and anything unexpected (a 500, logged with its
traceback)."""

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("tuneforge.serve")


class APIError(Exception):
    """Becomes an OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError):
        return e.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException):
        return APIError(e.status_code, str(e.detail), kind=_KINDS.get(e.status_code, "invalid_request_error"),
                        headers=e.headers).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError):
        return invalid(e.errors()).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return APIError(500, f"The server failed on this request ({type(e).__name__}); the server log has the "
                             "details.", kind="server_error").response()


def invalid(errors: list[dict]) -> APIError:
    """A 400 naming the first field pydantic or FastAPI refused (for the query and path parameters their
    location starts with "query" / "path", which is dropped), what it expected and what it got."""
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    loc = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    param = ".".join(loc) or None
    got = json.dumps(first.get("input"), default=str)[:100]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field; this server does not implement it, so it is refused rather than ignored. Remove it"
    return APIError(400, f"{param}: {message} (got {got})" if param else message, param)
