"""Errors a client gets back, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

OpenAI's clients read `error.message` and the status code (and raise `BadRequestError`,
`AuthenticationError`, ...), so every refusal of this server, from a bad API key to a
decompression bomb, is an `APIError` with a status, a message that names the problem and,
where one field is at fault, that field's path as `param`.
"""

from __future__ import annotations

from typing import Any

from llavakit.errors import RequestError

# The `type` OpenAI gives each status, as its API returns them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_overloaded",
}


class APIError(RequestError):
    """A request refused (4xx) or not served (5xx), with what the client should be told."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's API answers with."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or breaks a limit."""
    return APIError(400, message, param=param, code=code)
