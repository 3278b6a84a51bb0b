"""Errors raised by the pure transforms; each means 'this input is bad', never 'try again'."""


class TransformError(Exception):
    """Input that cannot be transformed; the record fails, the invocation does not."""


class DecodeError(TransformError):
    """A payload that is not valid gzip, JSON or CloudWatch Logs subscription data."""


class PayloadTooLargeError(DecodeError):
    """Decompression would exceed the configured ceiling (a gzip bomb or a misrouted file)."""


class FlowLogParseError(TransformError):
    """A flow-log line that does not fit its format."""


class FlowLogFormatError(ValueError):
    """A flow-log format string that names an unknown field or is otherwise invalid."""


class RoutePatternError(ValueError):
    """A routing rule whose log group, log stream, account or origin pattern does not compile."""
