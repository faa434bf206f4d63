"""The one error taxonomy of gatehouse; errors cross NATS as `ErrorInfo` data and only ingress writes HTTP.

GatewayError                      500 api_error            internal_error
├── InvalidRequestError           400 invalid_request_error invalid_request
│   ├── ContentPolicyViolation    400 invalid_request_error content_policy_violation
│   └── ContextLengthExceeded     400 invalid_request_error context_length_exceeded
├── AuthenticationError           401 invalid_request_error invalid_api_key
├── PermissionDeniedError         403 permission_error      permission_denied
├── NotFoundError                 404 invalid_request_error model_not_found
│   └── UnknownEndpointError      404 invalid_request_error unknown_url
├── MethodNotAllowedError         405 invalid_request_error method_not_allowed
├── RequestTimeoutError           408 timeout_error         request_timeout        (retryable)
├── ConflictError                 409 invalid_request_error conflict
├── PayloadTooLargeError          413 invalid_request_error request_too_large
├── UnprocessableEntityError      422 invalid_request_error unprocessable_entity
├── RateLimitError                429 rate_limit_error      rate_limit_exceeded    (retryable)
├── RunLimitExceeded              429 rate_limit_error      run_limit_exceeded
├── BudgetExceededError           429 insufficient_quota    budget_exceeded
├── UpstreamError                 502 api_error             bad_gateway            (retryable)
│   ├── UpstreamAuthError         502 api_error             upstream_auth_error    (retryable)
│   └── UpstreamResponseTooLarge  502 api_error             upstream_response_too_large
├── ServiceUnavailableError       503 api_error             service_unavailable    (retryable)
└── GatewayTimeoutError           504 timeout_error         gateway_timeout        (retryable)

A provider's 401/403 is the gateway's problem, not the client's: it becomes UpstreamAuthError, whose
message names only the provider (the provider's own words go to `detail`, which the attempt record
keeps and no client sees). `detail` is operator-only context on any error; `info()` never carries it.

A client that went away is no error of the taxonomy (nobody is left to answer): `CLIENT_CLOSED`, 499 in
nginx's convention, is recorded by ingress, the router and the batch worker, and never sent.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error as data, the form in which it travels on the bus and lands in ClickHouse."""

    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    retryable: bool = False
    retry_after: float | None = None


# what a request whose client went away ends with: recorded, never sent
CLIENT_CLOSED = ErrorInfo(
    status=499, type="client_closed", code="client_closed_request", message="The client closed the connection."
)


class GatewayError(Exception):
    """Base of every error gatehouse reports to a client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code_override = code
        self.retry_after = retry_after
        # response headers ingress adds when it writes this error (e.g. x-ratelimit-* on a 429)
        self.headers: dict[str, str] = {}
        self.detail = detail

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            status=self.status,
            type=self.type,
            code=self.code_override or self.code,
            message=self.message,
            param=self.param,
            retryable=self.retryable,
            retry_after=self.retry_after,
        )


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContentPolicyViolation(InvalidRequestError):
    code = "content_policy_violation"


class ContextLengthExceeded(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class UnknownEndpointError(NotFoundError):
    code = "unknown_url"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeoutError(GatewayError):
    status = 408
    type = "timeout_error"
    code = "request_timeout"
    retryable = True


class ConflictError(GatewayError):
    """The record exists, changed meanwhile, or still has records that depend on it (admin API)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnprocessableEntityError(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable_entity"


class RateLimitError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class RunLimitExceeded(GatewayError):
    """An agent run (`x-gatehouse-run-id`) reached one of its limits: retrying the same run does not help."""

    status = 429
    type = "rate_limit_error"
    code = "run_limit_exceeded"


class BudgetExceededError(GatewayError):
    """A hard budget cannot cover the request's worst-case cost; retrying helps only once the period
    ends (Retry-After) or the budget is raised."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "bad_gateway"
    retryable = True


class UpstreamAuthError(UpstreamError):
    """The provider rejected the gateway's credentials; another deployment may hold a working key."""

    code = "upstream_auth_error"


class UpstreamResponseTooLarge(UpstreamError):
    """The provider's answer passed a size limit (body, event or decompression ratio); reading stopped there.

    Not retryable: the size usually follows from the request, and the next deployment would bill it again.
    """

    code = "upstream_response_too_large"
    retryable = False


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"
    retryable = True


class PluginError(ServiceUnavailableError):
    """A plugin under `fail: closed` raised, timed out or broke its contract; the message names it only
    (shared/plugins.py). Declared here with the rest of the taxonomy, so its code is a metric label too."""

    code = "plugin_error"


class GatewayTimeoutError(GatewayError):
    status = 504
    type = "timeout_error"
    code = "gateway_timeout"
    retryable = True


_BY_STATUS: dict[int, type[GatewayError]] = {
    cls.status: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RequestTimeoutError,
        PayloadTooLargeError,
        UnprocessableEntityError,
        RateLimitError,
        UpstreamError,
        ServiceUnavailableError,
        GatewayTimeoutError,
    )
}


def error_for_status(status: int) -> type[GatewayError]:
    """The taxonomy class for an HTTP status reported by a provider (unknown 4xx → 400, 5xx → 502)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return InvalidRequestError
    if status == 500:
        return UpstreamError
    return UpstreamError if status < 600 else GatewayError


def error_body(info: ErrorInfo) -> dict[str, dict[str, str | None]]:
    """The OpenAI-style error envelope for `info`."""
    return {"error": {"message": info.message, "type": info.type, "param": info.param, "code": info.code}}
