"""The delivery error tree: what went wrong, and whether trying again can help.

```
DeliveryError
  ├─ RetryableError          connection error, timeout, 408/429/5xx: back off and retry
  │    └─ RequestCancelledError  the caller ended a request on the wire (abort, deadline)
  ├─ RejectedBatchError      HEC refused the data: backsplash it with the reason, no retry
  ├─ FatalHecError           token, channel or endpoint problem: stop sending, backsplash the rest
  ├─ AckUnavailableError     the token has indexer acknowledgment off (HEC code 14)
  └─ BacksplashError         S3 refused the write after retries: the caller decides
```

Messages carry HEC's text and code, never the token.
"""

from __future__ import annotations


class DeliveryError(Exception):
    """Root of every delivery failure.

    Attributes:
        error_code: the Firehose-style code for the backsplash (``Splunk.ServerError`` ...).
        hec_code: HEC's ``code`` from the answer body, when there was one.
    """

    default_error_code = "Splunk.ServerError"

    def __init__(
        self, message: str, *, error_code: str | None = None, hec_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code or self.default_error_code
        self.hec_code = hec_code


class RetryableError(DeliveryError):
    """Trying again later may work (HEC busy, 5xx, connection error, timeout).

    Attributes:
        retry_after: seconds HEC asked us to wait (``Retry-After``), or None.
        url: the HEC base URL that failed, so the caller can take it out of rotation.
        unhealthy: the failure says the URL itself is unwell (connection error, 503 code 18-20).
        maybe_delivered: HEC may have taken the request before failing (read timeout): a retry
            can duplicate.
    """

    def __init__(
        self,
        message: str,
        *,
        error_code: str | None = None,
        hec_code: int | None = None,
        retry_after: float | None = None,
        url: str | None = None,
        unhealthy: bool = False,
        maybe_delivered: bool = False,
    ) -> None:
        super().__init__(message, error_code=error_code, hec_code=hec_code)
        self.retry_after = retry_after
        self.url = url
        self.unhealthy = unhealthy
        self.maybe_delivered = maybe_delivered


class RequestCancelledError(RetryableError):
    """The caller cancelled a request on the wire (:meth:`RequestGuard.cancel`).

    HEC may have taken the request before it was cut off, so it counts as maybe delivered; the
    caller cancelled because it is giving up (abort, deadline), so nothing retries it.
    """

    default_error_code = "Splunk.Cancelled"


class RejectedBatchError(DeliveryError):
    """HEC refused the data itself; retrying the same bytes cannot help."""

    default_error_code = "Splunk.InvalidEvent"


class FatalHecError(DeliveryError):
    """A token, channel or endpoint problem: nothing more can be delivered with this setup."""

    default_error_code = "Splunk.InvalidToken"


class AckUnavailableError(DeliveryError):
    """The token has indexer acknowledgment disabled (HEC 400 code 14)."""

    default_error_code = "Splunk.DisabledAck"


class BacksplashError(DeliveryError):
    """The backsplash write failed after its retries; the events are not stored."""

    default_error_code = "Backsplash.WriteFailed"
