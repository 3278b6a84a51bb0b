"""The drain in both Lambda templates, deployed into moto's CloudFormation (server mode): with a
``DrainSchedule``, the drain function, its schedule, its DynamoDB state table, its
least-privilege role and its alarms; and the ``FallbackIndex`` parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.cfn_providers import fixture_moto_cfn  # noqa: F401 - the fixture
from tests.integration.cfn_stacks import (  # the fixtures and helpers
    CFN_MARKS,
    CODE_BUCKET,
    HEC_URL,
    Stack,
    env_of,
    fixture_aws,  # noqa: F401 - the fixture
    fixture_deploy,  # noqa: F401 - the fixture
    granting,
    resources,
    role_statements,
)

pytestmark = CFN_MARKS

SCHEDULE = "rate(15 minutes)"


def _drain_is_deployed(
    aws: Callable[[str], Any], stack: Stack, bucket: str, prefix: str
) -> dict[str, str]:
    """Check what every drain deploys; returns the drain function's environment."""
    outputs = stack.outputs
    function = outputs["DrainFunctionName"]
    table = outputs["DrainStateTableName"]
    config = aws("lambda").get_function_configuration(FunctionName=function)
    assert config["Handler"] == "forwarder.drain.handler"
    assert config["Timeout"] == 900
    env = env_of(aws, function)
    assert env["DRAIN_STATE"] == f"dynamodb://{table}"
    assert env["DRAIN_MAX_EVENTS_PER_S"] == "1000"
    assert env["DRAIN_MAX_ATTEMPTS"] == "3"
    assert env["BACKSPLASH_BUCKET"] == bucket
    assert env["BACKSPLASH_PREFIX"] == prefix

    events = aws("events")
    rule = events.describe_rule(Name=stack.resources["DrainScheduleRule"])
    assert rule["ScheduleExpression"] == SCHEDULE
    assert rule["State"] == "ENABLED"
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"] == config["FunctionArn"]

    description = aws("dynamodb").describe_table(TableName=table)["Table"]
    assert description["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"

    alarms = {
        a["MetricName"]: a
        for a in aws("cloudwatch").describe_alarms(AlarmNamePrefix=f"{stack.name}-")["MetricAlarms"]
    }
    age = alarms["BacklogOldestAgeSeconds"]
    assert age["Namespace"] == "FirehoseSplunkForwarder"
    assert age["Dimensions"] == [{"Name": "Bucket", "Value": bucket}]
    assert age["Threshold"] == 3600.0
    assert age["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarms["DrainEventsAbandoned"]["Dimensions"] == [{"Name": "Bucket", "Value": bucket}]

    statements = role_statements(aws("iam"), stack.resources["DrainRole"])
    objects = {f"arn:aws:s3:::{bucket}/{prefix}*"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"):
        (grant,) = granting(statements, action)
        assert resources(grant) == objects, action
    (listing,) = granting(statements, "s3:ListBucket")
    assert resources(listing) == {f"arn:aws:s3:::{bucket}"}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"):
        (grant,) = granting(statements, action)
        assert resources(grant) == {description["TableArn"]}, action
    return env


def test_push_stack_with_a_drain_and_a_fallback_index(
    deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    aws("logs").create_log_group(logGroupName="/app/drain")
    secret_arn = aws("secretsmanager").create_secret(Name="drain-token", SecretString="tok")["ARN"]
    stack = deploy(
        "push-to-splunk.yaml",
        "push-drain",
        HECUrl="https://splunk.example.com:8088",
        HECTokenSecretArn=secret_arn,
        LogGroupName="/app/drain",
        LambdaCodeS3Bucket=CODE_BUCKET,
        DrainSchedule=SCHEDULE,
        FallbackIndex="lastchance",
    )
    bucket = stack.outputs["BacksplashBucketName"]
    env = _drain_is_deployed(aws, stack, bucket, "push/")
    assert env["SPLUNK_HEC_URL"] == "https://splunk.example.com:8088"
    assert env["SPLUNK_HEC_TOKEN_SECRET_ARN"] == secret_arn
    assert "SPLUNK_HEC_TOKEN" not in env
    assert env["SPLUNK_FALLBACK_INDEX"] == "lastchance"
    assert env_of(aws, stack.outputs["FunctionArn"])["SPLUNK_FALLBACK_INDEX"] == "lastchance"
    (read,) = granting(
        role_statements(aws("iam"), stack.resources["DrainRole"]),
        "secretsmanager:GetSecretValue",
    )
    assert resources(read) == {secret_arn}


def test_firehose_stack_with_a_drain(
    deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    aws("logs").create_log_group(logGroupName="/app/fh-drain")
    stack = deploy(
        "firehose-to-splunk.yaml",
        "fh-drain",
        HECEndpoint=HEC_URL,
        HECToken="11111111-2222-3333-4444-555555555555",
        LogGroupName="/app/fh-drain",
        LambdaCodeS3Bucket=CODE_BUCKET,
        DrainSchedule=SCHEDULE,
    )
    env = _drain_is_deployed(aws, stack, stack.outputs["BackupBucketName"], "firehose/")
    assert env["SPLUNK_HEC_URL"] == HEC_URL
    assert env["SPLUNK_HEC_TOKEN"] == "11111111-2222-3333-4444-555555555555"
    assert env["SPLUNK_HEC_ENDPOINT"] == "event"
    assert "SPLUNK_FALLBACK_INDEX" not in env
    statements = role_statements(aws("iam"), stack.resources["DrainRole"])
    assert granting(statements, "secretsmanager:GetSecretValue") == []


def test_no_schedule_deploys_no_drain(
    deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    aws("logs").create_log_group(logGroupName="/app/no-drain")
    stack = deploy(
        "push-to-splunk.yaml",
        "push-no-drain",
        HECUrl="https://splunk.example.com:8088",
        HECToken="tok",
        LogGroupName="/app/no-drain",
        LambdaCodeS3Bucket=CODE_BUCKET,
    )
    drain = {name for name in stack.resources if name.startswith("Drain")}
    assert drain == set()
    assert "DrainFunctionName" not in stack.outputs
    assert "SPLUNK_FALLBACK_INDEX" not in env_of(aws, stack.outputs["FunctionArn"])
