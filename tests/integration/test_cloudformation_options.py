"""Every option combination that changes resources, deployed into moto's CloudFormation: a
customer-managed KMS key on or off, a VPC for the Lambdas on or off, an alarm topic on or off
(and, for the daemon, each source type). Each stack is read back through the AWS APIs: the
encryption of everything at rest, versioning and access logs, the functions' settings, the
alarms' actions, the dashboards, and IAM grants that exist only with their option.

The access-log bucket rides along with the KMS key, and the Lambda architecture, runtime and
reserved concurrency with the VPC, so each of those is seen both set and unset too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from typing import Any

import pytest

from tests.integration.cfn_providers import fixture_moto_cfn  # noqa: F401 - the fixture
from tests.integration.cfn_stacks import (  # the fixtures and helpers
    CFN_MARKS,
    CODE_BUCKET,
    HEC_URL,
    Stack,
    actions,
    fixture_aws,  # noqa: F401 - the fixture
    fixture_deploy,  # noqa: F401 - the fixture
    granting,
    resources,
    role_statements,
)

pytestmark = CFN_MARKS

ACCESS_LOG_BUCKET = "access-logs-bucket"
KMS_PAIR = {"kms:GenerateDataKey", "kms:Decrypt"}
VPC_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
ON_OFF = (False, True)


@dataclass
class Prerequisites:
    """What the options point at: a KMS key, two subnets and a security group, a topic."""

    key_arn: str
    subnets: list[str]
    security_group: str
    topic_arn: str


@pytest.fixture(name="prereqs")
def fixture_prereqs(aws: Callable[[str], Any]) -> Prerequisites:
    key_arn = aws("kms").create_key(Description="forwarder")["KeyMetadata"]["Arn"]
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24")["Subnet"]["SubnetId"]
        for i in (1, 2)
    ]
    group = ec2.create_security_group(GroupName=f"hec-{vpc}", Description="to HEC", VpcId=vpc)
    topic_arn = aws("sns").create_topic(Name="forwarder-alarms")["TopicArn"]
    s3 = aws("s3")
    if ACCESS_LOG_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=ACCESS_LOG_BUCKET)
        # What AccessLogBucketName's description asks of the bucket (S3 checks it).
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "logging.s3.amazonaws.com"},
                    "Action": ["s3:PutObject"],
                    "Resource": f"arn:aws:s3:::{ACCESS_LOG_BUCKET}/*",
                }
            ],
        }
        s3.put_bucket_policy(Bucket=ACCESS_LOG_BUCKET, Policy=json.dumps(policy))
    return Prerequisites(key_arn, subnets, group["GroupId"], topic_arn)


def _name(prefix: str, *flags: bool) -> str:
    return prefix + "".join(f"-{int(flag)}" for flag in flags)


def _option_parameters(p: Prerequisites, *, kms: bool, vpc: bool) -> dict[str, str]:
    params: dict[str, str] = {}
    if kms:
        params |= {"KmsKeyArn": p.key_arn, "AccessLogBucketName": ACCESS_LOG_BUCKET}
    if vpc:
        params |= {
            "SubnetIds": ",".join(p.subnets),
            "SecurityGroupIds": p.security_group,
            "Architecture": "x86_64",
            "Runtime": "python3.13",
            "ReservedConcurrency": "7",
        }
    return params


def _backsplash_bucket_is_right(s3: Any, bucket: str, key_arn: str | None) -> None:
    """Versioned, noncurrent versions expire, encrypted with the key (bucket keys) or SSE-S3,
    access-logged exactly when the key option (and its access-log bucket) is on."""
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    default = rule["ApplyServerSideEncryptionByDefault"]
    if key_arn:
        assert default == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
        assert rule["BucketKeyEnabled"] is True
    else:
        assert default == {"SSEAlgorithm": "AES256"}
        assert not rule.get("BucketKeyEnabled")
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert lifecycle["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 30
    }
    assert lifecycle["remove-expired-delete-markers"]["Expiration"] == {
        "ExpiredObjectDeleteMarker": True
    }
    logging = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled")
    if key_arn:
        assert logging is not None and logging["TargetBucket"] == ACCESS_LOG_BUCKET
    else:
        assert logging is None


def _log_group_key(logs: Any, name: str) -> str | None:
    (group,) = [
        g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        if g["logGroupName"] == name
    ]  # fmt: skip
    return group.get("kmsKeyId")


def _function_is_right(
    aws: Callable[[str], Any], function: str, p: Prerequisites, *, kms: bool, vpc: bool
) -> None:
    lam = aws("lambda")
    config = lam.get_function_configuration(FunctionName=function)
    assert config["Architectures"] == (["x86_64"] if vpc else ["arm64"])
    assert config["Runtime"] == ("python3.13" if vpc else "python3.12")
    assert config.get("KMSKeyArn") == (p.key_arn if kms else None)
    if vpc:
        assert sorted(config["VpcConfig"]["SubnetIds"]) == sorted(p.subnets)
        assert config["VpcConfig"]["SecurityGroupIds"] == [p.security_group]
        concurrency = lam.get_function_concurrency(FunctionName=function)
        assert concurrency["ReservedConcurrentExecutions"] == 7
    else:
        assert not config.get("VpcConfig", {}).get("SubnetIds")
        assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(
            FunctionName=function
        )


def _grants_are_right(
    statements: list[dict[str, Any]], key_arn: str, *, kms: bool, vpc: bool | None
) -> None:
    """KMS (exactly the pair, on the key) only with the key; VPC actions only with a VPC
    (``vpc=None``: a role that never gets them)."""
    kms_statements = [s for s in statements if any(a.startswith("kms:") for a in actions(s))]
    if kms:
        (grant,) = kms_statements
        assert actions(grant) == KMS_PAIR
        assert resources(grant) == {key_arn}
    else:
        assert kms_statements == []
    ec2 = [s for s in statements if any(a.startswith("ec2:") for a in actions(s))]
    if vpc:
        (grant,) = ec2
        assert actions(grant) == VPC_ACTIONS
    else:
        assert ec2 == []


def _alarm_actions(aws: Callable[[str], Any], stack: Stack) -> dict[str, list[str]]:
    alarms = aws("cloudwatch").describe_alarms(AlarmNamePrefix=f"{stack.name}-")["MetricAlarms"]
    return {a["MetricName"]: a["AlarmActions"] for a in alarms}


def _dashboard(aws: Callable[[str], Any], stack: Stack) -> str:
    body = aws("cloudwatch").get_dashboard(DashboardName=stack.outputs["DashboardName"])
    document = json.loads(body["DashboardBody"])
    assert document["widgets"]
    return str(body["DashboardBody"])


@pytest.mark.parametrize(("kms", "vpc", "topic"), list(product(ON_OFF, ON_OFF, ON_OFF)))
def test_firehose_stack_options(
    kms: bool,
    vpc: bool,
    topic: bool,
    *,
    deploy: Callable[..., Stack],
    aws: Callable[[str], Any],
    prereqs: Prerequisites,
) -> None:
    """GIVEN a combination of KMS key, VPC and alarm topic WHEN firehose-to-splunk deploys
    THEN every resource at rest uses the key exactly when it is given, the transform runs in
    the VPC exactly when subnets are given, and the five alarms notify the topic when set."""
    name = _name("fh", kms, vpc, topic)
    params = _option_parameters(prereqs, kms=kms, vpc=vpc)
    if topic:
        params["AlarmTopicArn"] = prereqs.topic_arn
    stack = deploy(
        "firehose-to-splunk.yaml",
        name,
        HECEndpoint=HEC_URL,
        HECToken="00000000-0000-0000-0000-000000000000",
        LogGroupName=f"/app/{name}",
        CreateLogGroup="true",
        LambdaCodeS3Bucket=CODE_BUCKET,
        **params,
    )
    key = prereqs.key_arn if kms else None
    out = stack.outputs
    s3 = aws("s3")
    bucket = out["BackupBucketName"]
    _backsplash_bucket_is_right(s3, bucket, key)
    # The request-metrics filter exists (moto does not echo its prefix; the template's is
    # checked as written).
    s3.get_bucket_metrics_configuration(Bucket=bucket, Id="splunk-failed")
    (metrics,) = stack.template["Resources"]["BackupBucket"]["Properties"]["MetricsConfigurations"]
    assert metrics["Prefix"] == {"Fn::Sub": "${BackupPrefix}splunk-failed/"}
    logs = aws("logs")
    for group in (f"/app/{name}", stack.resources["TransformLogGroup"]):
        assert _log_group_key(logs, group) == key, group
    assert _log_group_key(logs, out["FirehoseLogGroupName"]) == key

    description = aws("firehose").describe_delivery_stream(
        DeliveryStreamName=out["DeliveryStreamName"]
    )["DeliveryStreamDescription"]
    encryption = description["DeliveryStreamEncryptionConfiguration"]
    if kms:
        assert encryption["KeyType"] == "CUSTOMER_MANAGED_CMK"
        assert encryption["KeyARN"] == prereqs.key_arn
    else:
        assert encryption == {"KeyType": "AWS_OWNED_CMK"}
    backup = description["Destinations"][0]["SplunkDestinationDescription"][
        "S3DestinationDescription"
    ]
    assert backup["EncryptionConfiguration"] == (
        {"KMSEncryptionConfig": {"AWSKMSKeyARN": prereqs.key_arn}}
        if kms
        else {"NoEncryptionConfig": "NoEncryption"}
    )
    _function_is_right(aws, out["TransformFunctionArn"], prereqs, kms=kms, vpc=vpc)

    iam = aws("iam")
    transform = role_statements(iam, stack.resources["TransformRole"])
    _grants_are_right(transform, prereqs.key_arn, kms=kms, vpc=vpc)
    delivery = role_statements(iam, stack.resources["FirehoseRole"])
    _grants_are_right(delivery, prereqs.key_arn, kms=kms, vpc=None)
    logs_role = role_statements(iam, stack.resources["LogsToFirehoseRole"])
    _grants_are_right(logs_role, prereqs.key_arn, kms=False, vpc=None)

    alarms = _alarm_actions(aws, stack)
    assert set(alarms) == {
        "DeliveryToSplunk.Success",
        "DeliveryToSplunk.DataFreshness",
        "ExecuteProcessing.Success",
        "Errors",
        "Throttles",
    }
    assert all(a == ([prereqs.topic_arn] if topic else []) for a in alarms.values()), alarms
    body = _dashboard(aws, stack)
    assert out["DeliveryStreamName"] in body and bucket in body


@pytest.mark.parametrize(("kms", "vpc", "topic"), list(product(ON_OFF, ON_OFF, ON_OFF)))
def test_push_stack_options(
    kms: bool,
    vpc: bool,
    topic: bool,
    *,
    deploy: Callable[..., Stack],
    aws: Callable[[str], Any],
    prereqs: Prerequisites,
) -> None:
    """GIVEN a combination of KMS key, VPC and alarm topic WHEN push-to-splunk deploys THEN
    the bucket, log group, failure queue and environment use the key exactly when given, the
    function runs in the VPC exactly when subnets are given, and the alarms notify the topic."""
    name = _name("push", kms, vpc, topic)
    aws("logs").create_log_group(logGroupName=f"/app/{name}")
    params = _option_parameters(prereqs, kms=kms, vpc=vpc)
    if topic:
        params["AlarmTopicArn"] = prereqs.topic_arn
    stack = deploy(
        "push-to-splunk.yaml",
        name,
        HECUrl="https://splunk.internal.example:8088",
        HECToken="tok",
        LogGroupName=f"/app/{name}",
        LambdaCodeS3Bucket=CODE_BUCKET,
        **params,
    )
    key = prereqs.key_arn if kms else None
    out = stack.outputs
    _backsplash_bucket_is_right(aws("s3"), out["BacksplashBucketName"], key)
    assert _log_group_key(aws("logs"), stack.resources["FunctionLogGroup"]) == key
    queue = aws("sqs").get_queue_attributes(
        QueueUrl=out["FailedInvocationsQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert queue.get("KmsMasterKeyId") == key
    if not kms:  # (moto reports SQS-managed SSE on beside a key; AWS would not)
        assert queue["SqsManagedSseEnabled"] == "true"
    _function_is_right(aws, out["FunctionArn"], prereqs, kms=kms, vpc=vpc)
    push = role_statements(aws("iam"), stack.resources["PushRole"])
    _grants_are_right(push, prereqs.key_arn, kms=kms, vpc=vpc)
    assert granting(push, "s3:PutObject")  # the rest of the role is unchanged
    alarms = _alarm_actions(aws, stack)
    assert set(alarms) == {"Errors", "BacksplashWrites", "ApproximateNumberOfMessagesVisible"}
    assert all(a == ([prereqs.topic_arn] if topic else []) for a in alarms.values()), alarms
    assert out["FunctionName"] in _dashboard(aws, stack)


@pytest.mark.parametrize(("kms", "source"), list(product(ON_OFF, ("kinesis", "sqs"))))
def test_daemon_stack_options(
    kms: bool,
    source: str,
    *,
    deploy: Callable[..., Stack],
    aws: Callable[[str], Any],
    prereqs: Prerequisites,
) -> None:
    """GIVEN a KMS key or none, for each source WHEN daemon.yaml deploys THEN the table (with
    point-in-time recovery), stream, queues and buckets use the key exactly when given, and
    only then may the daemon (and CloudWatch Logs' role into Kinesis) use it."""
    name = _name(f"daemon-{source}", kms)
    params = _option_parameters(prereqs, kms=kms, vpc=False)
    if source == "kinesis":
        aws("logs").create_log_group(logGroupName=f"/app/{name}")
        params |= {"SourceType": "kinesis", "LogGroupName": f"/app/{name}"}
    else:
        params |= {"SourceType": "sqs", "ComputePlatform": "ECS"}
    stack = deploy("daemon.yaml", name, **params)
    key = prereqs.key_arn if kms else None
    out = stack.outputs
    dynamodb = aws("dynamodb")
    table = dynamodb.describe_table(TableName=out["CheckpointTableName"])["Table"]
    if kms:
        assert table["SSEDescription"]["SSEType"] == "KMS"
        assert table["SSEDescription"]["KMSMasterKeyArn"] == prereqs.key_arn
    backups = dynamodb.describe_continuous_backups(TableName=out["CheckpointTableName"])
    pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"
    s3 = aws("s3")
    _backsplash_bucket_is_right(s3, out["BacksplashBucketName"], key)
    iam = aws("iam")
    daemon = role_statements(iam, stack.resources["DaemonRole"])
    _grants_are_right(daemon, prereqs.key_arn, kms=kms, vpc=None)
    body = _dashboard(aws, stack)
    if source == "kinesis":
        summary = aws("kinesis").describe_stream_summary(StreamName=out["KinesisStreamName"])[
            "StreamDescriptionSummary"
        ]
        assert summary["EncryptionType"] == "KMS"
        assert summary["KeyId"] == (prereqs.key_arn if kms else "alias/aws/kinesis")
        producer = role_statements(iam, stack.resources["LogsToKinesisRole"])
        kms_grants = [s for s in producer if any(a.startswith("kms:") for a in actions(s))]
        if kms:
            (grant,) = kms_grants
            assert actions(grant) == {"kms:GenerateDataKey"}
            assert resources(grant) == {prereqs.key_arn}
        else:
            assert kms_grants == []
        assert out["KinesisStreamName"] in body
    else:
        sqs = aws("sqs")
        for url in (out["NotificationQueueUrl"], out["DeadLetterQueueUrl"]):
            queue = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            assert queue.get("KmsMasterKeyId") == key
            if not kms:  # (moto reports SQS-managed SSE on beside a key; AWS would not)
                assert queue["SqsManagedSseEnabled"] == "true"
        _backsplash_bucket_is_right(s3, out["FlowLogBucketName"], key)
        assert out["NotificationQueueUrl"].rsplit("/", 1)[1] in body


@pytest.mark.parametrize("with_stream", ON_OFF)
def test_push_stack_kinesis_event_source(
    with_stream: bool, *, deploy: Callable[..., Stack], aws: Callable[[str], Any]
) -> None:
    """GIVEN a Kinesis stream (or none) WHEN push-to-splunk deploys with the event source
    mapping's settings THEN Lambda reads the stream with them, reporting failed records one by
    one, and only then may the function read that stream (and nothing else of Kinesis)."""
    name = _name("push-kinesis", with_stream)
    aws("logs").create_log_group(logGroupName=f"/app/{name}")
    params: dict[str, str] = {}
    stream_arn = ""
    if with_stream:
        kinesis = aws("kinesis")
        kinesis.create_stream(StreamName=name, ShardCount=2)
        stream_arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
            "StreamARN"
        ]
        params = {
            "KinesisStreamArn": stream_arn,
            "BatchSize": "500",
            "MaximumBatchingWindowInSeconds": "5",
            "ParallelizationFactor": "4",
        }
    stack = deploy(
        "push-to-splunk.yaml",
        name,
        HECUrl="https://splunk.example.com:8088",
        HECToken="tok",
        LogGroupName=f"/app/{name}",
        LambdaCodeS3Bucket=CODE_BUCKET,
        **params,
    )
    function = stack.outputs["FunctionName"]
    mappings = aws("lambda").list_event_source_mappings(FunctionName=function)[
        "EventSourceMappings"
    ]
    statements = role_statements(aws("iam"), stack.resources["PushRole"])
    reads = [s for s in statements if any(a.startswith("kinesis:") for a in actions(s))]
    if not with_stream:
        assert mappings == []
        assert reads == []
        return
    (mapping,) = mappings
    assert mapping["EventSourceArn"] == stream_arn
    assert mapping["BatchSize"] == 500
    assert mapping["MaximumBatchingWindowInSeconds"] == 5
    assert mapping["ParallelizationFactor"] == 4
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    (read,) = reads
    assert resources(read) == {stream_arn}
    assert actions(read) == {
        "kinesis:DescribeStream",
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    }
