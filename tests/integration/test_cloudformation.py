"""The CloudFormation templates: cfn-lint clean, and deployed into moto's CloudFormation (server
mode) with every resource read back through the AWS APIs. moto's gaps are filled by the
providers in `tests.integration.cfn_providers`; the shipped templates are deployed unchanged,
nothing here is a test-only parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file  # type: ignore[import-untyped]

from tests.integration.cfn_providers import fixture_moto_cfn  # noqa: F401 - the fixture
from tests.integration.cfn_stacks import (  # the fixtures and helpers
    ACCOUNT,
    CFN_MARKS,
    CODE_BUCKET,
    HEC_URL,
    REGION,
    TEMPLATE_NAMES,
    TEMPLATES,
    Stack,
    actions,
    bucket_is_locked_down,
    env_of,
    fixture_aws,  # noqa: F401 - the fixture
    fixture_deploy,  # noqa: F401 - the fixture
    granting,
    policy_statements,
    resources,
    role_statements,
)

pytestmark = CFN_MARKS


# --------------------------------------------------------------------------------------------
# cfn-lint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_cfn_lint_reports_nothing(name: str) -> None:
    """GIVEN a template WHEN cfn-lint checks it (informational rules included) THEN no match."""
    matches = lint_file(TEMPLATES / name, config=ManualArgs(include_checks=["I"]))
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


# --------------------------------------------------------------------------------------------
# firehose-to-splunk.yaml
# --------------------------------------------------------------------------------------------


def test_firehose_stack_with_secret_new_log_group_and_flow_log(
    deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    """GIVEN a VPC and a token secret WHEN firehose-to-splunk deploys with every option on
    THEN the stream, transform, bucket, subscription, flow log and roles are wired together."""
    vpc_id = aws("ec2").create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    secret_arn = aws("secretsmanager").create_secret(
        Name="hec-token", SecretString='{"hec_token": "0000"}'
    )["ARN"]
    flow_format = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${action}"
    stack = deploy(
        "firehose-to-splunk.yaml",
        "fh-full",
        HECEndpoint=HEC_URL,
        HECEndpointType="Raw",
        HECTokenSecretArn=secret_arn,
        HECAcknowledgmentTimeoutInSeconds="600",
        RetryDurationInSeconds="7200",
        LogGroupName="/aws/vpc/flow-logs",
        CreateLogGroup="true",
        VpcId=vpc_id,
        VpcFlowLogFormat=flow_format,
        LambdaCodeS3Bucket=CODE_BUCKET,
        SplunkIndex="aws_vpc",
        BackupRetentionInDays="7",
    )
    out = stack.outputs
    stream_arn = out["DeliveryStreamArn"]
    assert stream_arn.endswith(f":deliverystream/{out['DeliveryStreamName']}")
    function_arn = out["TransformFunctionArn"]
    bucket = out["BackupBucketName"]

    description = aws("firehose").describe_delivery_stream(
        DeliveryStreamName=out["DeliveryStreamName"]
    )["DeliveryStreamDescription"]
    assert description["DeliveryStreamType"] == "DirectPut"
    assert description["DeliveryStreamEncryptionConfiguration"] == {"KeyType": "AWS_OWNED_CMK"}
    splunk = description["Destinations"][0]["SplunkDestinationDescription"]
    firehose_role = f"arn:aws:iam::{ACCOUNT}:role/{stack.resources['FirehoseRole']}"
    assert splunk["HECEndpoint"] == HEC_URL
    assert splunk["HECEndpointType"] == "Raw"
    assert "HECToken" not in splunk
    assert splunk["SecretsManagerConfiguration"] == {
        "Enabled": True,
        "SecretARN": secret_arn,
        "RoleARN": firehose_role,
    }
    assert splunk["HECAcknowledgmentTimeoutInSeconds"] == 600
    assert splunk["RetryOptions"] == {"DurationInSeconds": 7200}
    assert splunk["BufferingHints"] == {"SizeInMBs": 5, "IntervalInSeconds": 60}
    assert splunk["S3BackupMode"] == "FailedEventsOnly"
    backup = splunk["S3DestinationDescription"]
    assert backup["BucketARN"] == f"arn:aws:s3:::{bucket}"
    assert backup["RoleARN"] == firehose_role
    assert backup["Prefix"] == "firehose/"
    assert backup["CompressionFormat"] == "GZIP"
    firehose_logs = out["FirehoseLogGroupName"]
    assert backup["CloudWatchLoggingOptions"] == {
        "Enabled": True,
        "LogGroupName": firehose_logs,
        "LogStreamName": "BackupDelivery",
    }
    assert splunk["CloudWatchLoggingOptions"] == {
        "Enabled": True,
        "LogGroupName": firehose_logs,
        "LogStreamName": "DestinationDelivery",
    }
    processing = splunk["ProcessingConfiguration"]
    assert processing["Enabled"] is True
    (processor,) = processing["Processors"]
    assert processor["Type"] == "Lambda"
    assert {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]} == {
        "LambdaArn": function_arn,
        "RoleArn": firehose_role,
        "BufferSizeInMBs": "1",
        "BufferIntervalInSeconds": "60",
        "NumberOfRetries": "3",
    }
    streams = aws("logs").describe_log_streams(logGroupName=firehose_logs)["logStreams"]
    assert {s["logStreamName"] for s in streams} == {"DestinationDelivery", "BackupDelivery"}

    bucket_is_locked_down(aws("s3"), bucket, expire_days=7)

    logs = aws("logs")
    (group,) = logs.describe_log_groups(logGroupNamePrefix="/aws/vpc/flow-logs")["logGroups"]
    assert group["retentionInDays"] == 14
    (subscription,) = logs.describe_subscription_filters(logGroupName="/aws/vpc/flow-logs")[
        "subscriptionFilters"
    ]
    assert subscription["destinationArn"] == stream_arn
    assert subscription["roleArn"].endswith(f":role/{stack.resources['LogsToFirehoseRole']}")
    assert subscription["filterPattern"] == ""

    (flow_log,) = aws("ec2").describe_flow_logs()["FlowLogs"]
    assert flow_log["ResourceId"] == vpc_id
    assert flow_log["LogDestinationType"] == "cloud-watch-logs"
    assert flow_log["LogGroupName"] == "/aws/vpc/flow-logs"
    assert flow_log["LogFormat"] == flow_format
    assert flow_log["TrafficType"] == "ALL"
    assert flow_log["DeliverLogsPermissionArn"].endswith(f":role/{stack.resources['FlowLogRole']}")

    config = aws("lambda").get_function_configuration(FunctionName=function_arn)
    assert config["Handler"] == "transforms.firehose.handler"
    assert config["Runtime"] == "python3.12"
    assert config["Timeout"] == 180
    assert config["MemorySize"] == 512
    assert env_of(aws, function_arn) == {
        "SPLUNK_HEC_ENDPOINT": "raw",
        "SPLUNK_INDEX": "aws_vpc",
        "VPC_FLOW_LOG_FORMAT": flow_format,
        "EVENT_FORMAT": "auto",
        "LOG_LEVEL": "INFO",
    }
    # moto's Lambda does not model LoggingConfig: check the template wires the function to
    # the log group its role may write to.
    function = stack.template["Resources"]["TransformFunction"]["Properties"]
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "TransformLogGroup"}}

    iam = aws("iam")
    transform = role_statements(iam, stack.resources["TransformRole"])
    (reingest,) = granting(transform, "firehose:PutRecordBatch")
    assert resources(reingest) == {stream_arn}
    assert not [s for s in transform if any(a.startswith("kinesis:") for a in actions(s))]
    delivery = role_statements(iam, stack.resources["FirehoseRole"])
    (read_secret,) = granting(delivery, "secretsmanager:GetSecretValue")
    assert resources(read_secret) == {secret_arn}
    (invoke,) = granting(delivery, "lambda:InvokeFunction")
    assert resources(invoke) == {function_arn, f"{function_arn}:*"}
    (put,) = granting(delivery, "s3:PutObject")
    assert resources(put) == {f"arn:aws:s3:::{bucket}/firehose/*"}
    (logs_put,) = granting(
        role_statements(iam, stack.resources["LogsToFirehoseRole"]), "firehose:PutRecord"
    )
    assert resources(logs_put) == {stream_arn}


def test_firehose_stack_with_token_on_existing_log_group(
    deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    """GIVEN an existing log group WHEN firehose-to-splunk deploys with a NoEcho token and no
    VPC THEN the token goes to the destination and no flow log, log group or secret grant exists."""
    aws("logs").create_log_group(logGroupName="/app/orders")
    stack = deploy(
        "firehose-to-splunk.yaml",
        "fh-min",
        HECEndpoint=HEC_URL,
        HECToken="11111111-2222-3333-4444-555555555555",
        LogGroupName="/app/orders",
        LambdaCodeS3Bucket=CODE_BUCKET,
        SubscriptionFilterPattern="ERROR",
        BackupRetentionInDays="0",
    )
    assert "SourceLogGroup" not in stack.resources
    assert "FlowLog" not in stack.resources
    assert "FlowLogRole" not in stack.resources
    splunk = aws("firehose").describe_delivery_stream(
        DeliveryStreamName=stack.outputs["DeliveryStreamName"]
    )["DeliveryStreamDescription"]["Destinations"][0]["SplunkDestinationDescription"]
    assert splunk["HECToken"] == "11111111-2222-3333-4444-555555555555"
    assert splunk["HECEndpointType"] == "Event"
    assert splunk["HECAcknowledgmentTimeoutInSeconds"] == 300
    assert splunk["RetryOptions"] == {"DurationInSeconds": 3600}
    assert "SecretsManagerConfiguration" not in splunk
    (subscription,) = aws("logs").describe_subscription_filters(logGroupName="/app/orders")[
        "subscriptionFilters"
    ]
    assert subscription["filterPattern"] == "ERROR"
    assert subscription["destinationArn"] == stack.outputs["DeliveryStreamArn"]
    flow_logs = aws("ec2").describe_flow_logs()["FlowLogs"]
    assert [f for f in flow_logs if f.get("LogGroupName") == "/app/orders"] == []
    bucket_is_locked_down(aws("s3"), stack.outputs["BackupBucketName"], expire_days=None)
    env = env_of(aws, stack.outputs["TransformFunctionArn"])
    assert env == {"SPLUNK_HEC_ENDPOINT": "event", "EVENT_FORMAT": "auto", "LOG_LEVEL": "INFO"}
    delivery = role_statements(aws("iam"), stack.resources["FirehoseRole"])
    assert granting(delivery, "secretsmanager:GetSecretValue") == []


# --------------------------------------------------------------------------------------------
# push-to-splunk.yaml
# --------------------------------------------------------------------------------------------


def test_push_stack(deploy: Callable[..., Stack], aws: Callable[[str], Any]) -> None:
    """GIVEN two log groups WHEN push-to-splunk deploys THEN the function's settings,
    subscriptions, permissions, on-failure queue, alarms and bucket are in place."""
    logs = aws("logs")
    for group in ("/app/api", "/app/worker"):
        logs.create_log_group(logGroupName=group)
    stack = deploy(
        "push-to-splunk.yaml",
        "push",
        HECUrl="https://splunk-a.example.com:8088,https://splunk-b.example.com:8088",
        HECToken="tok-123",
        LogGroupName="/app/api",
        AdditionalLogGroupName="/app/worker",
        LambdaCodeS3Bucket=CODE_BUCKET,
        VpcFlowLogFormat="${version} ${srcaddr}",
        MaximumRetryAttempts="1",
    )
    out = stack.outputs
    function_arn = out["FunctionArn"]
    bucket = out["BacksplashBucketName"]
    lam = aws("lambda")
    config = lam.get_function_configuration(FunctionName=function_arn)
    assert config["Handler"] == "forwarder.push.handler"
    assert config["Runtime"] == "python3.12"
    assert config["Timeout"] == 900
    assert env_of(aws, function_arn) == {
        "SPLUNK_HEC_URL": "https://splunk-a.example.com:8088,https://splunk-b.example.com:8088",
        "SPLUNK_HEC_TOKEN": "tok-123",
        "SPLUNK_HEC_ENDPOINT": "event",
        "SPLUNK_HEC_ACK": "true",
        "SPLUNK_HEC_ACK_TIMEOUT": "180",
        "SPLUNK_HEC_ACK_POLL_INTERVAL": "10",
        "SPLUNK_HEC_RETRY_DURATION": "300",
        "SPLUNK_HEC_VERIFY_TLS": "true",
        "VPC_FLOW_LOG_FORMAT": "${version} ${srcaddr}",
        "EVENT_FORMAT": "auto",
        "BACKSPLASH_BUCKET": bucket,
        "BACKSPLASH_PREFIX": "push/",
        "LOG_LEVEL": "INFO",
    }

    queue_url = out["FailedInvocationsQueueUrl"]
    queue_arn = aws("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    invoke_config = lam.get_function_event_invoke_config(
        FunctionName=out["FunctionName"], Qualifier="$LATEST"
    )
    assert invoke_config["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn
    assert invoke_config["MaximumRetryAttempts"] == 1
    assert invoke_config["MaximumEventAgeInSeconds"] == 21600

    permissions = policy_statements(lam.get_policy(FunctionName=out["FunctionName"])["Policy"])
    source_arns = {p["Condition"]["ArnLike"]["AWS:SourceArn"] for p in permissions}
    assert source_arns == {
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/app/api:*",
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/app/worker:*",
    }
    assert {p["Principal"]["Service"] for p in permissions} == {"logs.amazonaws.com"}
    for group in ("/app/api", "/app/worker"):
        (subscription,) = logs.describe_subscription_filters(logGroupName=group)[
            "subscriptionFilters"
        ]
        assert subscription["destinationArn"] == function_arn

    (metric_filter,) = logs.describe_metric_filters(
        logGroupName=stack.resources["FunctionLogGroup"]
    )["metricFilters"]
    assert metric_filter["filterPattern"] == '{ $.event = "backsplash_written" }'
    (transformation,) = metric_filter["metricTransformations"]
    assert transformation["metricNamespace"] == "FirehoseSplunkForwarder/push"
    assert transformation["metricName"] == "BacksplashWrites"

    alarms = {
        a["MetricName"]: a
        for a in aws("cloudwatch").describe_alarms(AlarmNamePrefix=f"{stack.name}-")["MetricAlarms"]
    }
    assert set(alarms) == {"Errors", "BacksplashWrites", "ApproximateNumberOfMessagesVisible"}
    assert alarms["Errors"]["Dimensions"] == [
        {"Name": "FunctionName", "Value": out["FunctionName"]}
    ]
    assert alarms["BacksplashWrites"]["Namespace"] == "FirehoseSplunkForwarder/push"
    assert alarms["ApproximateNumberOfMessagesVisible"]["Dimensions"] == [
        {"Name": "QueueName", "Value": queue_url.rsplit("/", 1)[1]}
    ]
    for alarm in alarms.values():
        assert alarm["Threshold"] == 1.0
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"

    bucket_is_locked_down(aws("s3"), bucket, expire_days=30)
    statements = role_statements(aws("iam"), stack.resources["PushRole"])
    (put,) = granting(statements, "s3:PutObject")
    assert resources(put) == {f"arn:aws:s3:::{bucket}/push/*"}
    (send,) = granting(statements, "sqs:SendMessage")
    assert resources(send) == {queue_arn}
    assert granting(statements, "secretsmanager:GetSecretValue") == []
    assert not [s for s in statements if actions(s) & {"s3:GetObject", "s3:ListBucket"}]


def test_push_stack_with_token_secret(
    deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    """GIVEN a token secret WHEN push-to-splunk deploys with it THEN the function gets the
    secret's ARN (not a token) and may read exactly that secret."""
    aws("logs").create_log_group(logGroupName="/app/billing")
    secret_arn = aws("secretsmanager").create_secret(Name="push-token", SecretString="tok")["ARN"]
    stack = deploy(
        "push-to-splunk.yaml",
        "push-secret",
        HECUrl="https://splunk.example.com:8088",
        HECTokenSecretArn=secret_arn,
        LogGroupName="/app/billing",
        LambdaCodeS3Bucket=CODE_BUCKET,
    )
    env = env_of(aws, stack.outputs["FunctionArn"])
    assert env["SPLUNK_HEC_TOKEN_SECRET_ARN"] == secret_arn
    assert "SPLUNK_HEC_TOKEN" not in env
    assert "AdditionalSubscriptionFilter" not in stack.resources
    (read,) = granting(
        role_statements(aws("iam"), stack.resources["PushRole"]), "secretsmanager:GetSecretValue"
    )
    assert resources(read) == {secret_arn}


# --------------------------------------------------------------------------------------------
# daemon.yaml
# --------------------------------------------------------------------------------------------


def _checkpoint_table_is_right(dynamodb: Any, table: str) -> None:
    description = dynamodb.describe_table(TableName=table)["Table"]
    assert description["KeySchema"] == [
        {"AttributeName": "stream_name", "KeyType": "HASH"},
        {"AttributeName": "shard_id", "KeyType": "RANGE"},
    ]
    assert sorted(
        (a["AttributeName"], a["AttributeType"]) for a in description["AttributeDefinitions"]
    ) == [("shard_id", "S"), ("stream_name", "S")]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_daemon_stack_kinesis(deploy: Callable[..., Stack], aws: Callable[[str], Any]) -> None:
    """GIVEN a log group WHEN daemon.yaml deploys with SourceType kinesis THEN the stream is
    subscribed, the table keyed, and the EC2 role may read exactly that stream."""
    aws("logs").create_log_group(logGroupName="/aws/vpc/prod")
    stack = deploy(
        "daemon.yaml",
        "daemon-kinesis",
        SourceType="kinesis",
        LogGroupName="/aws/vpc/prod",
        ShardCount="2",
        StreamRetentionPeriodHours="48",
    )
    out = stack.outputs
    assert "NotificationQueueUrl" not in out
    assert "FlowLogBucket" not in stack.resources
    summary = aws("kinesis").describe_stream_summary(StreamName=out["KinesisStreamName"])[
        "StreamDescriptionSummary"
    ]
    assert summary["OpenShardCount"] == 2
    assert summary["RetentionPeriodHours"] == 48
    assert summary["StreamARN"] == out["KinesisStreamArn"]
    (subscription,) = aws("logs").describe_subscription_filters(logGroupName="/aws/vpc/prod")[
        "subscriptionFilters"
    ]
    assert subscription["destinationArn"] == out["KinesisStreamArn"]
    assert subscription["roleArn"].endswith(f":role/{stack.resources['LogsToKinesisRole']}")
    _checkpoint_table_is_right(aws("dynamodb"), out["CheckpointTableName"])
    bucket_is_locked_down(aws("s3"), out["BacksplashBucketName"], expire_days=30)

    iam = aws("iam")
    role_name = stack.resources["DaemonRole"]
    trust = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in policy_statements(trust)] == [{"Service": "ec2.amazonaws.com"}]
    profile = iam.get_instance_profile(InstanceProfileName=out["DaemonInstanceProfileName"])
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [role_name]
    statements = role_statements(iam, role_name)
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{out['CheckpointTableName']}"
    granted = {
        action: resources(s) for s in statements if s["Effect"] == "Allow" for action in actions(s)
    }
    assert granted == {
        "dynamodb:GetItem": {table_arn},
        "dynamodb:PutItem": {table_arn},
        "dynamodb:UpdateItem": {table_arn},
        "dynamodb:Query": {table_arn},
        "s3:PutObject": {f"arn:aws:s3:::{out['BacksplashBucketName']}/daemon/*"},
        "kinesis:DescribeStream": {out["KinesisStreamArn"]},
        "kinesis:DescribeStreamSummary": {out["KinesisStreamArn"]},
        "kinesis:ListShards": {out["KinesisStreamArn"]},
        "kinesis:GetShardIterator": {out["KinesisStreamArn"]},
        "kinesis:GetRecords": {out["KinesisStreamArn"]},
    }


def test_daemon_stack_sqs(deploy: Callable[..., Stack], aws: Callable[[str], Any]) -> None:
    """GIVEN a VPC WHEN daemon.yaml deploys with SourceType sqs on ECS THEN flow-log files land
    in a bucket that notifies a queue with a dead-letter queue, and the task role reads both."""
    vpc_id = aws("ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    secret_arn = aws("secretsmanager").create_secret(Name="daemon-token", SecretString="t")["ARN"]
    stack = deploy(
        "daemon.yaml",
        "daemon-sqs",
        SourceType="sqs",
        VpcId=vpc_id,
        ComputePlatform="ECS",
        HECTokenSecretArn=secret_arn,
        MaxReceiveCount="3",
    )
    out = stack.outputs
    assert "KinesisStreamName" not in out
    assert "DaemonInstanceProfileName" not in out
    sqs = aws("sqs")
    queue_url, dlq_url = out["NotificationQueueUrl"], out["DeadLetterQueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 3
    assert attributes["VisibilityTimeout"] == "900"
    assert attributes["SqsManagedSseEnabled"] == "true"
    bucket = out["FlowLogBucketName"]
    stack_uuid = (
        aws("cloudformation")
        .describe_stacks(StackName=stack.name)["Stacks"][0]["StackId"]
        .rsplit("/", 1)[1]
    )
    assert bucket == f"flow-logs-{ACCOUNT}-{stack_uuid}"
    (allow_s3,) = policy_statements(attributes["Policy"])
    assert allow_s3["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allow_s3["Action"] == "sqs:SendMessage"
    assert allow_s3["Resource"] == attributes["QueueArn"]
    assert allow_s3["Condition"]["ArnEquals"] == {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}

    s3 = aws("s3")
    notification = s3.get_bucket_notification_configuration(Bucket=bucket)
    (queue_config,) = notification["QueueConfigurations"]
    assert queue_config["QueueArn"] == attributes["QueueArn"]
    assert queue_config["Events"] == ["s3:ObjectCreated:*"]
    rules = {r["Name"].lower(): r["Value"] for r in queue_config["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": "AWSLogs/", "suffix": ".log.gz"}
    bucket_is_locked_down(s3, bucket, expire_days=30)
    delivery = [
        s
        for s in policy_statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        if s["Effect"] == "Allow"
    ]
    assert {s["Principal"]["Service"] for s in delivery} == {"delivery.logs.amazonaws.com"}
    assert {frozenset(resources(s)) for s in delivery} == {
        frozenset({f"arn:aws:s3:::{bucket}/AWSLogs/{ACCOUNT}/*"}),
        frozenset({f"arn:aws:s3:::{bucket}"}),
    }

    (flow_log,) = [
        f for f in aws("ec2").describe_flow_logs()["FlowLogs"] if f["ResourceId"] == vpc_id
    ]
    assert flow_log["LogDestinationType"] == "s3"
    assert flow_log["LogDestination"] == f"arn:aws:s3:::{bucket}"

    _checkpoint_table_is_right(aws("dynamodb"), out["CheckpointTableName"])
    iam = aws("iam")
    role_name = stack.resources["DaemonRole"]
    trust = policy_statements(iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"])
    assert [s["Principal"] for s in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
    assert trust[0]["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    statements = role_statements(iam, role_name)
    granted = {
        action: resources(s) for s in statements if s["Effect"] == "Allow" for action in actions(s)
    }
    queue_arn = attributes["QueueArn"]
    assert {k: v for k, v in granted.items() if not k.startswith(("dynamodb:", "s3:Put"))} == {
        "sqs:ReceiveMessage": {queue_arn},
        "sqs:DeleteMessage": {queue_arn},
        "sqs:ChangeMessageVisibility": {queue_arn},
        "sqs:GetQueueAttributes": {queue_arn},
        "s3:GetObject": {f"arn:aws:s3:::{bucket}/AWSLogs/*"},
        "secretsmanager:GetSecretValue": {secret_arn},
    }
