"""Exit statuses, and the one place that maps an outcome to one (the README lists them)."""

from __future__ import annotations

import errno
import sys
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, NamedTuple

from config.errors import ConfigError


class ExitStatus(IntEnum):
    """Exit statuses; the README lists them. 0 means everything delivered and acknowledged."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # also every configuration error (DESIGN.md section 7)
    HEC_FATAL = 4  # token or channel refused by HEC; data went to the backsplash
    INCOMPLETE = 5  # some events were backsplashed or dropped as unparsable input
    BACKSPLASH_FAILED = 6  # events could be neither delivered nor stored: see the log
    INTERRUPTED = 130


class RunOutcome(NamedTuple):
    """The facts of a finished run that decide its exit status (the flags are independent).

    ``backsplash_failed``: events could be neither delivered nor stored, or the ledger does
    not balance. ``hec_fatal``: HEC refused the token or channel. ``user_mistake``: AWS refused
    something the user must grant or fix (a permission, a bucket). ``error``: the run itself
    failed (an unexpected exception, an unreadable bucket). ``interrupted``: a stop signal
    ended it early (a daemon's graceful stop is not an interruption). ``incomplete``: some
    events were backsplashed or dropped for a reason other than control messages.
    ``partial_failure``: some units (objects, files) failed while the events were accounted for.

    A NamedTuple rather than a dataclass: ``forwarder --help`` imports this module, and
    ``dataclasses`` (through ``inspect``) would be most of its import time.
    """

    backsplash_failed: bool = False
    hec_fatal: bool = False
    user_mistake: bool = False
    error: bool = False
    interrupted: bool = False
    incomplete: bool = False
    partial_failure: bool = False


#: Drop reasons that are not a loss: CloudWatch Logs' own control messages carry no log data.
#: Nor are events a route's ``drop`` and ``sample`` rules remove (``filtered``, ``sampled``).
NOT_A_LOSS: frozenset[str] = frozenset({"control_message", "filtered", "sampled"})


def incomplete(summary: Mapping[str, Any]) -> bool:
    """Whether a ledger summary shows events backsplashed or dropped for a real reason."""
    dropped: Mapping[str, int] = summary.get("dropped", {})
    lost = any(count for reason, count in dropped.items() if reason not in NOT_A_LOSS)
    return bool(summary.get("backsplashed")) or lost


#: The status each fact of a :class:`RunOutcome` calls for, the most severe first.
_BY_SEVERITY: Mapping[str, ExitStatus] = {
    "backsplash_failed": ExitStatus.BACKSPLASH_FAILED,
    "hec_fatal": ExitStatus.HEC_FATAL,
    "user_mistake": ExitStatus.USAGE,
    "error": ExitStatus.FAILURE,
    "interrupted": ExitStatus.INTERRUPTED,
    "incomplete": ExitStatus.INCOMPLETE,
    "partial_failure": ExitStatus.FAILURE,
}


def status_for(outcome: RunOutcome | BaseException) -> ExitStatus:
    """The one mapping from an outcome, or an exception that ended a command, to a status.

    The most severe fact wins: 6 (data neither delivered nor stored), then 4 (HEC refused us),
    then 2 (AWS refused what the user must grant: a permission, a bucket), then 1 (the run
    failed), 130 (interrupted), 5 (incomplete), 1 (some units failed), 0.
    An exception is 2 when it is a mistake the user fixes (:func:`is_user_mistake`), 130 for
    an interruption and 1 otherwise.
    """
    if isinstance(outcome, BaseException):
        if isinstance(outcome, KeyboardInterrupt):
            return ExitStatus.INTERRUPTED
        return ExitStatus.USAGE if is_user_mistake(outcome) else ExitStatus.FAILURE
    for fact, status in _BY_SEVERITY.items():
        if getattr(outcome, fact):
            return status
    return ExitStatus.OK


#: ``OSError`` numbers that say a path or address the user named cannot be used (a missing
#: input file, a directory given as a file, no permission, a port already taken).
USER_ERRNOS: frozenset[int] = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ENAMETOOLONG,
        errno.EADDRINUSE,
        errno.EADDRNOTAVAIL,
    }
)

#: AWS error codes that the user fixes (a bucket name, a credential, a permission, a region).
AWS_USER_CODES: frozenset[str] = frozenset(
    {
        "NoSuchBucket",
        "InvalidBucketName",
        "PermanentRedirect",  # the bucket is in another region
        "AuthorizationHeaderMalformed",
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)

#: botocore's own errors (no request answered) that a setting or credential fixes.
_BOTOCORE_USER_ERRORS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "NoRegionError",
    "ProfileNotFound",
    "InvalidRegionError",
    "ParamValidationError",
)


def _botocore_error(exc: BaseException, names: tuple[str, ...]) -> bool:
    """Whether ``exc`` is one of botocore's exception classes ``names``. botocore is an
    optional heavy dependency: when it was never imported, no exception can be one of its."""
    module = sys.modules.get("botocore.exceptions")
    if module is None:
        return False
    classes = tuple(getattr(module, name) for name in names if hasattr(module, name))
    return isinstance(exc, classes)


def aws_error_code(exc: BaseException) -> str | None:
    """The error code of an AWS service answer (``NoSuchBucket``, ``AccessDenied``), else None."""
    if not _botocore_error(exc, ("ClientError",)):
        return None
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def is_aws_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from botocore (an AWS answer, a credential or connection error)."""
    return _botocore_error(exc, ("BotoCoreError", "ClientError"))


def is_user_mistake(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake the user fixes (exit status 2): a configuration error, a
    path or address that cannot be used, a missing bucket, credential or permission."""
    if isinstance(exc, ConfigError):
        return True
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        return True
    if aws_error_code(exc) in AWS_USER_CODES:
        return True
    return _botocore_error(exc, _BOTOCORE_USER_ERRORS)


def describe(exc: BaseException) -> str | None:
    """One line that names what went wrong for an exception that ended a command, or None
    for an exception that is not an expected failure (a bug: its traceback is shown)."""
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}"
    if isinstance(exc, OSError):
        return _describe_os_error(exc)
    code = aws_error_code(exc)
    if code is not None:
        return _describe_aws_answer(exc, code)
    if is_aws_error(exc):
        if _botocore_error(exc, ("NoCredentialsError", "PartialCredentialsError")):
            return f"AWS: {exc} (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        if _botocore_error(exc, ("NoRegionError",)):
            return f"AWS: {exc} (set AWS_DEFAULT_REGION)"
        return f"AWS: {exc}"
    return None


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        reason = reason[:1].lower() + reason[1:]
        return f"{exc.filename}: {reason}"
    return str(exc)


def _describe_aws_answer(exc: BaseException, code: str) -> str:
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    error: Mapping[str, Any] = response.get("Error", {})
    operation = getattr(exc, "operation_name", "the request")
    message = error.get("Message") or code
    bucket = error.get("BucketName")
    if code == "NoSuchBucket":
        return f"S3 bucket {bucket or '(unnamed)'} does not exist ({operation})"
    if code in AWS_USER_CODES and "Denied" in code:
        where = f" on bucket {bucket}" if bucket else ""
        return f"AWS refused {operation}{where}: {code}: {message} (check the IAM permissions)"
    return f"AWS answered {code} to {operation}: {message}"
