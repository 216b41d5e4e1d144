"""One error tree for the whole service; the HTTP layer renders it as JSON:API ``errors[]``.

::

    BackstockError (500 error)
    ├── BadRequest (400 invalid)
    │   ├── InvalidParameter (400 invalid, source.parameter)
    │   ├── InvalidBody (400 invalid, source.pointer; may carry several problems)
    │   └── UntrustedHost (400 untrusted_host, source.parameter Host)
    ├── NotAuthenticated (401 not_authenticated)
    ├── PermissionDenied (403 permission_denied)
    ├── NotFound (404 not_found)
    ├── MethodNotAllowed (405 method_not_allowed)
    ├── NotAcceptable (406 not_acceptable)
    ├── Conflict (409 duplicate)
    │   └── JobFinished (409 job_finished)
    ├── IdempotencyMismatch (422 idempotency_key_reused)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── UriTooLong (414 uri_too_long)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── Throttled (429 throttled)
    ├── TooManyJobs (429 too_many_jobs)
    │   └── QuotaExceeded (429 quota_exceeded)
    ├── HeadersTooLarge (431 headers_too_large)
    └── Unavailable (503 service_unavailable)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Problem:
    """One entry of a JSON:API error document."""

    detail: str
    pointer: str | None = None
    parameter: str | None = None
    code: str | None = None
    title: str | None = None


class BackstockError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"
    title: ClassVar[str] = "A server error occurred."
    default_detail: ClassVar[str] = "A server error occurred."

    def __init__(
        self,
        detail: str | None = None,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
        problems: list[Problem] | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail)
        if problems:
            self.problems = problems
        else:
            self.problems = [Problem(self.detail, pointer=pointer, parameter=parameter)]
        self.retry_after = retry_after
        self.headers = headers or {}


class BadRequest(BackstockError):
    status = 400
    code = "invalid"
    title = "Invalid input."
    default_detail = "The request is invalid."


class InvalidParameter(BadRequest):
    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail, parameter=parameter)


class InvalidBody(BadRequest):
    """One or more problems in the request document, each with its JSON pointer."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems[0].detail, problems=problems)


class UntrustedHost(BadRequest):
    code = "untrusted_host"
    title = "Untrusted host."

    def __init__(self, host: str) -> None:
        detail = (
            f"Host '{host[:100]}' is not one this service answers for (BACKSTOCK_ALLOWED_HOSTS)."
        )
        super().__init__(detail, parameter="Host")


class NotAuthenticated(BackstockError):
    status = 401
    code = "not_authenticated"
    title = "Missing or invalid API key."
    default_detail = "Missing or invalid API key."


class PermissionDenied(BackstockError):
    status = 403
    code = "permission_denied"
    title = "You do not have permission to perform this action."
    default_detail = "This API key does not have the required scope."


class NotFound(BackstockError):
    status = 404
    code = "not_found"
    title = "Not found."
    default_detail = "Not found."


class MethodNotAllowed(BackstockError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed."
    default_detail = "Method not allowed."


class NotAcceptable(BackstockError):
    status = 406
    code = "not_acceptable"
    title = "Not acceptable."
    default_detail = "This endpoint answers application/vnd.api+json only."


class RequestTimeout(BackstockError):
    status = 408
    code = "request_timeout"
    title = "Request timeout."
    default_detail = "The request body did not arrive in time."


class Conflict(BackstockError):
    status = 409
    code = "duplicate"
    title = "Conflict."
    default_detail = "A resource with this id already exists."


class JobFinished(Conflict):
    code = "job_finished"
    title = "The job has finished."
    default_detail = "The job has finished."


class IdempotencyMismatch(BackstockError):
    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused."
    default_detail = (
        "This Idempotency-Key was used with a different request; send a new key for a new job."
    )


class PayloadTooLarge(BackstockError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large."
    default_detail = "The request body is too large."


class UriTooLong(BackstockError):
    status = 414
    code = "uri_too_long"
    title = "URI too long."
    default_detail = "The path and query are too long."


class UnsupportedMediaType(BackstockError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type."
    default_detail = "Send application/vnd.api+json or application/json."


class Throttled(BackstockError):
    status = 429
    code = "throttled"
    title = "Request was throttled."
    default_detail = "Request was throttled."


class TooManyJobs(BackstockError):
    status = 429
    code = "too_many_jobs"
    title = "Too many jobs in progress."
    default_detail = "Too many jobs are queued or processing for this account."


class QuotaExceeded(TooManyJobs):
    code = "quota_exceeded"
    title = "Storage quota exceeded."
    default_detail = "This account's queued jobs hold too many bytes; wait for some to complete."


class HeadersTooLarge(BackstockError):
    status = 431
    code = "headers_too_large"
    title = "Request header fields too large."
    default_detail = "The request's headers are too large."


class Unavailable(BackstockError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable."
    default_detail = "The service is temporarily unavailable; retry later."
    kind: str = "database"
    """What is unavailable (for metrics): ``locked``, ``full``, ``read_only``, ``io``,
    ``cant_open``, ``away``, ``busy`` (the database), or ``bodies`` (this process's cap on
    request bodies in flight)."""

    def __init__(self, detail: str | None = None, *, kind: str = "database", **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.kind = kind
