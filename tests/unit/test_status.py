"""The one exit-status mapping: severity order and the exception cases."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from forwarder.status import ExitStatus, RunOutcome, describe, incomplete, status_for


def test_a_clean_run_is_ok() -> None:
    assert status_for(RunOutcome()) is ExitStatus.OK


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (RunOutcome(backsplash_failed=True, hec_fatal=True, incomplete=True), 6),
        (RunOutcome(hec_fatal=True, error=True, interrupted=True), 4),
        (RunOutcome(error=True, interrupted=True, incomplete=True), 1),
        (RunOutcome(interrupted=True, incomplete=True), 130),
        (RunOutcome(incomplete=True, partial_failure=True), 5),
        (RunOutcome(partial_failure=True), 1),
    ],
)
def test_the_most_severe_fact_wins(outcome: RunOutcome, expected: int) -> None:
    assert status_for(outcome) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConfigError("SPLUNK_HEC_URL", "missing"), 2),
        (KeyboardInterrupt(), 130),
        (OSError("disk"), 1),
    ],
)
def test_exceptions_map_to_their_status(exc: BaseException, expected: int) -> None:
    assert status_for(exc) == expected


def test_control_messages_are_not_a_loss_but_other_drops_are() -> None:
    assert not incomplete({"backsplashed": 0, "dropped": {"control_message": 3}})
    assert incomplete({"backsplashed": 0, "dropped": {"line_too_long": 1}})
    assert incomplete({"backsplashed": 2, "dropped": {}})


@pytest.mark.parametrize("fact", RunOutcome._fields)
def test_every_fact_alone_is_a_failure_status(fact: str) -> None:
    """The severity table names every fact: none of them alone reads as success."""
    assert status_for(RunOutcome(**{fact: True})) is not ExitStatus.OK


def _client_error(code: str, bucket: str | None = None) -> BaseException:
    from botocore.exceptions import ClientError

    error = {"Code": code, "Message": f"{code} said S3"}
    if bucket is not None:
        error["BucketName"] = bucket
    return ClientError({"Error": error}, "ListObjectsV2")  # type: ignore[typeddict-item]


def test_aws_mistakes_a_user_fixes_are_usage_errors_named_in_one_line() -> None:
    from botocore.exceptions import NoCredentialsError, NoRegionError

    missing = _client_error("NoSuchBucket", "my-bucket")
    assert status_for(missing) is ExitStatus.USAGE
    assert describe(missing) == "S3 bucket my-bucket does not exist (ListObjectsV2)"
    denied = _client_error("AccessDenied", "my-bucket")
    assert status_for(denied) is ExitStatus.USAGE
    assert "AWS refused ListObjectsV2 on bucket my-bucket: AccessDenied" in str(describe(denied))
    assert status_for(NoCredentialsError()) is ExitStatus.USAGE
    assert "AWS_ACCESS_KEY_ID" in str(describe(NoCredentialsError()))
    assert status_for(NoRegionError()) is ExitStatus.USAGE
    assert "AWS_DEFAULT_REGION" in str(describe(NoRegionError()))


def test_other_aws_failures_are_failures_described_in_one_line() -> None:
    from botocore.exceptions import EndpointConnectionError

    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert status_for(down) is ExitStatus.FAILURE
    assert describe(down) == f"AWS: {down}"
    slow = _client_error("SlowDown")
    assert status_for(slow) is ExitStatus.FAILURE
    assert describe(slow) == "AWS answered SlowDown to ListObjectsV2: SlowDown said S3"


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (FileNotFoundError(2, "No such file or directory", "in.log"), 2, "in.log: no such file"),
        (PermissionError(13, "Permission denied", "/var/spool"), 2, "/var/spool: permission"),
        (OSError(98, "Address already in use"), 2, "Address already in use"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
    ],
)
def test_os_errors_about_what_the_user_named_are_usage_errors(
    exc: OSError, status: int, line: str
) -> None:
    assert status_for(exc) == status
    assert line in str(describe(exc))


def test_a_bug_is_not_described() -> None:
    """Unknown exceptions get no line: the command line lets their traceback through."""
    assert describe(RuntimeError("bug")) is None
    assert status_for(RuntimeError("bug")) is ExitStatus.FAILURE
