"""The CloudFormation templates: cfn-lint clean, and deployed into moto's CloudFormation (server
mode) with every resource read back through the AWS APIs.

moto's CloudFormation engine resolves parameters, conditions, Ref/GetAtt/Sub/Select/Split and
creates what it models, but it has no provider for some types these templates use
(KinesisFirehose::DeliveryStream, Logs::SubscriptionFilter, Logs::LogStream, Logs::MetricFilter,
S3::BucketPolicy, SQS::QueuePolicy, Lambda::EventInvokeConfig, CloudWatch::Alarm), and its
S3::Bucket provider applies only encryption and tags. For those, `_PROVIDERS` below plays the
CloudFormation resource provider: it receives the properties moto resolved and makes the
service API call CloudFormation would, through boto3 against the same moto server, so botocore
validates every property name and type against the real API model. The shipped templates are
deployed unchanged; nothing here is a test-only parameter.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cfnlint.api import ManualArgs, lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]
from moto.cloudformation import parsing
from moto.dynamodb.models.table import Table
from moto.kinesis.models import Stream
from moto.s3.models import FakeBucket

from tests.conftest import boto_client

pytestmark = [
    pytest.mark.integration,
    # moto's Firehose stores a Splunk destination as given but warns that it does not deliver
    # to it; the warning is raised in moto's server thread while a stack is created.
    pytest.mark.filterwarnings(
        "ignore:A Splunk destination delivery stream is not yet implemented:UserWarning"
    ),
]

TEMPLATES = Path(__file__).resolve().parents[2] / "cloudformation"
TEMPLATE_NAMES = ("firehose-to-splunk.yaml", "push-to-splunk.yaml", "daemon.yaml")
ACCOUNT = "123456789012"
REGION = "us-east-1"
CODE_BUCKET = "lambda-code"
CODE_KEY = "firehose-splunk-forwarder/lambda.zip"
# Any zip will do for moto's Lambda: it checks the object exists, never runs it.
PLACEHOLDER_ZIP = (
    b"PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)
HEC_URL = "https://http-inputs-firehose-example.splunkcloud.com:443"


# --------------------------------------------------------------------------------------------
# cfn-lint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_cfn_lint_reports_nothing(name: str) -> None:
    """GIVEN a template WHEN cfn-lint checks it (informational rules included) THEN no match."""
    matches = lint_file(TEMPLATES / name, config=ManualArgs(include_checks=["I"]))
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


# --------------------------------------------------------------------------------------------
# moto CloudFormation providers for what moto does not model
# --------------------------------------------------------------------------------------------


class _Clients:
    """boto3 clients against the moto server, made once per service."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto_client(service, self.endpoint)
        return self._clients[service]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


_CLIENTS: _Clients | None = None
# A provider's exception becomes an opaque HTTP 500 for create_stack: keep the reason.
_PROVIDER_ERRORS: list[str] = []


def _client(service: str) -> Any:
    assert _CLIENTS is not None, "provider used outside the moto_cfn fixture"
    return _CLIENTS(service)


def _coerce(value: Any, shape: Any) -> Any:
    """CloudFormation hands scalars over as strings; the API wants its declared types."""
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {k: _coerce(v, shape.members.get(k)) for k, v in value.items()}
    if kind == "map" and isinstance(value, dict):
        return {k: _coerce(v, shape.value) for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_coerce(v, shape.member) for v in value]
    if kind in ("integer", "long"):
        return int(value)
    if kind in ("double", "float"):
        return float(value)
    if kind == "boolean" and isinstance(value, str):
        return value.lower() == "true"
    if kind == "string" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _call(service: str, operation: str, **params: Any) -> Any:
    """Call an API operation with params coerced to its input shape (botocore validates)."""
    client = _client(service)
    model = client.meta.service_model.operation_model(operation)
    coerced = _coerce(params, model.input_shape)
    method = getattr(client, _snake(operation))
    return method(**coerced)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


@dataclass
class _Resource:
    """What moto keeps for a resource one of our providers created."""

    physical_resource_id: str
    attributes: dict[str, str]

    def get_cfn_attribute(self, name: str) -> str:
        return self.attributes[name]

    def is_created(self) -> bool:
        return True


class _Provider:
    """A CloudFormation resource provider for moto: properties in, API call, resource out."""

    cfn_type = ""
    name_property = ""
    attributes: tuple[str, ...] = ()

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in cls.attributes

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        props = dict(cloudformation_json.get("Properties", {}))
        name = props.pop(cls.name_property, resource_name) if cls.name_property else resource_name
        try:
            return cls.create(name, props)
        except Exception as exc:
            _PROVIDER_ERRORS.append(f"{cls.cfn_type} {name}: {exc}")
            raise

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> Any:
        raise NotImplementedError


class _DeliveryStream(_Provider):
    cfn_type = "AWS::KinesisFirehose::DeliveryStream"
    name_property = "DeliveryStreamName"
    attributes = ("Arn",)

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        props.pop("Tags", None)
        arn = _call("firehose", "CreateDeliveryStream", DeliveryStreamName=name, **props)[
            "DeliveryStreamARN"
        ]
        return _Resource(name, {"Arn": arn})


class _SubscriptionFilter(_Provider):
    cfn_type = "AWS::Logs::SubscriptionFilter"
    name_property = "FilterName"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        params = {
            "logGroupName": props["LogGroupName"],
            "filterName": name,
            "filterPattern": props["FilterPattern"],
            "destinationArn": props["DestinationArn"],
        }
        if "RoleArn" in props:
            params["roleArn"] = props["RoleArn"]
        _call("logs", "PutSubscriptionFilter", **params)
        return _Resource(name, {})


class _LogStream(_Provider):
    cfn_type = "AWS::Logs::LogStream"
    name_property = "LogStreamName"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        _call("logs", "CreateLogStream", logGroupName=props["LogGroupName"], logStreamName=name)
        return _Resource(name, {})


class _MetricFilter(_Provider):
    cfn_type = "AWS::Logs::MetricFilter"
    name_property = "FilterName"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        transformations = [
            {k[0].lower() + k[1:]: v for k, v in t.items()} for t in props["MetricTransformations"]
        ]
        _call(
            "logs",
            "PutMetricFilter",
            logGroupName=props["LogGroupName"],
            filterName=name,
            filterPattern=props["FilterPattern"],
            metricTransformations=transformations,
        )
        return _Resource(name, {})


class _BucketPolicy(_Provider):
    cfn_type = "AWS::S3::BucketPolicy"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        policy = json.dumps(props["PolicyDocument"])
        _call("s3", "PutBucketPolicy", Bucket=props["Bucket"], Policy=policy)
        return _Resource(props["Bucket"], {})


class _QueuePolicy(_Provider):
    cfn_type = "AWS::SQS::QueuePolicy"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        policy = json.dumps(props["PolicyDocument"])
        for url in props["Queues"]:
            _call("sqs", "SetQueueAttributes", QueueUrl=url, Attributes={"Policy": policy})
        return _Resource(name, {})


class _EventInvokeConfig(_Provider):
    cfn_type = "AWS::Lambda::EventInvokeConfig"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        _call("lambda", "PutFunctionEventInvokeConfig", **props)
        return _Resource(name, {})


class _Alarm(_Provider):
    cfn_type = "AWS::CloudWatch::Alarm"
    name_property = "AlarmName"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        _call("cloudwatch", "PutMetricAlarm", AlarmName=name, **props)
        return _Resource(name, {})


class _Dashboard(_Provider):
    cfn_type = "AWS::CloudWatch::Dashboard"
    name_property = "DashboardName"

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        json.loads(props["DashboardBody"])  # CloudWatch rejects a body that is not JSON
        _call("cloudwatch", "PutDashboard", DashboardName=name, **props)
        return _Resource(name, {})


class _LogGroup(_Provider):
    """Through the API: moto's own provider drops KmsKeyId."""

    cfn_type = "AWS::Logs::LogGroup"
    name_property = "LogGroupName"
    attributes = ("Arn",)

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        params = {"logGroupName": name}
        if "KmsKeyId" in props:
            params["kmsKeyId"] = props["KmsKeyId"]
        _call("logs", "CreateLogGroup", **params)
        if "RetentionInDays" in props:
            _call(
                "logs",
                "PutRetentionPolicy",
                logGroupName=name,
                retentionInDays=props["RetentionInDays"],
            )
        (group,) = _call("logs", "DescribeLogGroups", logGroupNamePrefix=name)["logGroups"]
        return _Resource(name, {"Arn": group["arn"]})


class _Function(_Provider):
    """Through the Lambda API: moto's own provider drops Architectures, KmsKeyArn and
    LoggingConfig, and never reserves concurrency."""

    cfn_type = "AWS::Lambda::Function"
    name_property = "FunctionName"
    attributes = ("Arn",)

    @classmethod
    def create(cls, name: str, props: dict[str, Any]) -> _Resource:
        reserved = props.pop("ReservedConcurrentExecutions", None)
        if "KmsKeyArn" in props:
            props["KMSKeyArn"] = props.pop("KmsKeyArn")
        arn = _call("lambda", "CreateFunction", FunctionName=name, **props)["FunctionArn"]
        if reserved is not None:
            _call(
                "lambda",
                "PutFunctionConcurrency",
                FunctionName=name,
                ReservedConcurrentExecutions=reserved,
            )
        return _Resource(name, {"Arn": arn})


class _Augmented(_Provider):
    """moto's own provider for a type, then the properties it ignores, through the API."""

    base: Any = None

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return bool(cls.base.has_cfn_attr(attr))

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        resource = cls.base.create_from_cloudformation_json(
            resource_name, cloudformation_json, account_id, region_name, **kwargs
        )
        try:
            cls.apply(resource, cloudformation_json.get("Properties", {}))
        except Exception as exc:
            _PROVIDER_ERRORS.append(f"{cls.cfn_type} {resource_name}: {exc}")
            raise
        return resource

    @classmethod
    def apply(cls, resource: Any, props: dict[str, Any]) -> None:
        raise NotImplementedError


class _Table(_Augmented):
    cfn_type = "AWS::DynamoDB::Table"
    base = Table

    @classmethod
    def apply(cls, resource: Any, props: dict[str, Any]) -> None:
        if "PointInTimeRecoverySpecification" in props:
            _call(
                "dynamodb",
                "UpdateContinuousBackups",
                TableName=resource.name,
                PointInTimeRecoverySpecification=props["PointInTimeRecoverySpecification"],
            )


class _Stream(_Augmented):
    cfn_type = "AWS::Kinesis::Stream"
    base = Stream

    @classmethod
    def apply(cls, resource: Any, props: dict[str, Any]) -> None:
        if "StreamEncryption" in props:
            _call(
                "kinesis",
                "StartStreamEncryption",
                StreamName=resource.stream_name,
                **props["StreamEncryption"],
            )


class _Bucket(_Provider):
    """moto's own bucket provider, then the properties it ignores, through the S3 API."""

    cfn_type = "AWS::S3::Bucket"

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        bucket = FakeBucket.create_from_cloudformation_json(
            resource_name, cloudformation_json, account_id, region_name, **kwargs
        )
        try:
            cls.apply(bucket.name, cloudformation_json.get("Properties", {}))
        except Exception as exc:
            _PROVIDER_ERRORS.append(f"{cls.cfn_type} {bucket.name}: {exc}")
            raise
        return bucket

    @staticmethod
    def apply(name: str, props: dict[str, Any]) -> None:
        """Apply the properties moto's bucket provider ignores (or reads only in part)."""
        if "BucketEncryption" in props:
            rules = [
                {
                    "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"],
                    **(
                        {"BucketKeyEnabled": rule["BucketKeyEnabled"]}
                        if "BucketKeyEnabled" in rule
                        else {}
                    ),
                }
                for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]
            _call(
                "s3",
                "PutBucketEncryption",
                Bucket=name,
                ServerSideEncryptionConfiguration={"Rules": rules},
            )
        if "VersioningConfiguration" in props:
            _call(
                "s3",
                "PutBucketVersioning",
                Bucket=name,
                VersioningConfiguration=props["VersioningConfiguration"],
            )
        if "LoggingConfiguration" in props:
            logging = props["LoggingConfiguration"]
            _call(
                "s3",
                "PutBucketLogging",
                Bucket=name,
                BucketLoggingStatus={
                    "LoggingEnabled": {
                        "TargetBucket": logging["DestinationBucketName"],
                        "TargetPrefix": logging.get("LogFilePrefix", ""),
                    }
                },
            )
        for metrics in props.get("MetricsConfigurations", []):
            _call(
                "s3",
                "PutBucketMetricsConfiguration",
                Bucket=name,
                Id=metrics["Id"],
                MetricsConfiguration={"Id": metrics["Id"], "Filter": {"Prefix": metrics["Prefix"]}},
            )
        if "PublicAccessBlockConfiguration" in props:
            _call(
                "s3",
                "PutPublicAccessBlock",
                Bucket=name,
                PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"],
            )
        if "OwnershipControls" in props:
            _call(
                "s3",
                "PutBucketOwnershipControls",
                Bucket=name,
                OwnershipControls=props["OwnershipControls"],
            )
        if "LifecycleConfiguration" in props:
            rules = [_lifecycle_rule(rule) for rule in props["LifecycleConfiguration"]["Rules"]]
            _call(
                "s3",
                "PutBucketLifecycleConfiguration",
                Bucket=name,
                LifecycleConfiguration={"Rules": rules},
            )
        if "NotificationConfiguration" in props:
            queues = [
                {
                    "QueueArn": q["Queue"],
                    "Events": [q["Event"]],
                    "Filter": {"Key": {"FilterRules": q["Filter"]["S3Key"]["Rules"]}},
                }
                for q in props["NotificationConfiguration"].get("QueueConfigurations", [])
            ]
            _call(
                "s3",
                "PutBucketNotificationConfiguration",
                Bucket=name,
                NotificationConfiguration={"QueueConfigurations": queues},
            )


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """AWS::S3::Bucket Rule -> the S3 API's LifecycleRule (documented property mapping)."""
    out: dict[str, Any] = {
        "ID": rule["Id"],
        "Status": rule["Status"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
    }
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": rule["ExpirationInDays"]}
    if "ExpiredObjectDeleteMarker" in rule:
        out["Expiration"] = {"ExpiredObjectDeleteMarker": rule["ExpiredObjectDeleteMarker"]}
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = rule["NoncurrentVersionExpiration"]
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    return out


_PROVIDERS: tuple[type[_Provider], ...] = (
    _DeliveryStream,
    _SubscriptionFilter,
    _LogStream,
    _MetricFilter,
    _BucketPolicy,
    _QueuePolicy,
    _EventInvokeConfig,
    _Alarm,
    _Bucket,
    _Dashboard,
    _LogGroup,
    _Function,
    _Table,
    _Stream,
)


@pytest.fixture(name="moto_cfn", scope="module")
def fixture_moto_cfn(moto_server: str) -> Iterator[str]:
    """The session's moto server with our providers installed for this module; yields its URL."""
    global _CLIENTS  # noqa: PLW0603 - moto calls the providers as classmethods: state is global
    parsing.get_model_map.cache_clear()
    model_map = parsing.get_model_map()
    for provider in _PROVIDERS:
        model_map[provider.cfn_type] = provider  # type: ignore[assignment]
    _CLIENTS = _Clients(moto_server)
    try:
        yield moto_server
    finally:
        _CLIENTS.close()
        _CLIENTS = None
        parsing.get_model_map.cache_clear()
        with requests.Session() as session:
            session.post(f"{moto_server}/moto-api/reset", timeout=10)


# --------------------------------------------------------------------------------------------
# deploying
# --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A deployed stack: its outputs and physical resource ids."""

    name: str
    outputs: dict[str, str]
    resources: dict[str, str]
    template: dict[str, Any]


@pytest.fixture(name="aws")
def fixture_aws(moto_cfn: str, aws_env: None) -> Iterator[Callable[[str], Any]]:
    """A factory of boto3 clients against the moto server, closed after the test."""
    clients = _Clients(moto_cfn)
    yield clients
    clients.close()


@pytest.fixture(name="deploy")
def fixture_deploy(aws: Callable[[str], Any]) -> Callable[..., Stack]:
    """Deploy a template with parameters; fail the test unless the stack is CREATE_COMPLETE."""
    s3 = aws("s3")
    if CODE_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=CODE_BUCKET)
        s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=PLACEHOLDER_ZIP)

    def deploy(template: str, stack_name: str, **parameters: str) -> Stack:
        cfn = aws("cloudformation")
        _PROVIDER_ERRORS.clear()
        try:
            cfn.create_stack(
                StackName=stack_name,
                TemplateBody=(TEMPLATES / template).read_text(),
                Parameters=[
                    {"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()
                ],
                Capabilities=["CAPABILITY_IAM"],
            )
        except Exception as exc:
            pytest.fail(f"create_stack failed: {exc!r}; providers said: {_PROVIDER_ERRORS}")
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        # Some moto models (Lambda::Permission, IAM::Policy) keep no physical id.
        resources = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
            if "LogicalResourceId" in r and "PhysicalResourceId" in r
        }
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        template_dict, matches = decode(str(TEMPLATES / template))
        assert not matches and template_dict is not None
        return Stack(stack_name, outputs, resources, dict(template_dict))

    return deploy


def _statements(document: Any) -> list[dict[str, Any]]:
    """Statements of a policy document; Fn::If ... AWS::NoValue entries resolved away."""
    if isinstance(document, str):
        try:
            doc = json.loads(document)
        except json.JSONDecodeError:
            # moto keeps a role's inline policies from CloudFormation as a Python repr.
            doc = ast.literal_eval(document)
    else:
        doc = document
    statements = doc["Statement"]
    return [s for s in (statements if isinstance(statements, list) else [statements]) if s]


def _env(aws: Callable[[str], Any], function: str) -> dict[str, str]:
    """A function's environment, values as strings (moto keeps Number parameters as ints
    where CloudFormation hands Lambda strings)."""
    config = aws("lambda").get_function_configuration(FunctionName=function)
    return {k: str(v) for k, v in config["Environment"]["Variables"].items()}


def _role_statements(iam: Any, role_name: str) -> list[dict[str, Any]]:
    """Every statement of every inline policy of a role."""
    out: list[dict[str, Any]] = []
    for policy in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        out += _statements(
            iam.get_role_policy(RoleName=role_name, PolicyName=policy)["PolicyDocument"]
        )
    return out


def _actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def _resources(statement: dict[str, Any]) -> set[str]:
    resource = statement["Resource"]
    return {resource} if isinstance(resource, str) else set(resource)


def _granting(statements: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [s for s in statements if s["Effect"] == "Allow" and action in _actions(s)]


def _bucket_is_locked_down(s3: Any, bucket: str, *, expire_days: int | None) -> None:
    """Encryption, public access block, owner-enforced, TLS-only policy and lifecycle."""
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(
        block[k]
        for k in (
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        )
    )
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    deny = [
        s
        for s in _statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        if s["Effect"] == "Deny"
    ]
    assert len(deny) == 1
    assert deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert _resources(deny[0]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert lifecycle["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7
    }
    expire = [r for r in lifecycle.values() if "Days" in r.get("Expiration", {})]
    assert len(expire) == 1
    if expire_days is None:
        assert expire[0]["Status"] == "Disabled"
    else:
        assert expire[0]["Status"] == "Enabled"
        assert expire[0]["Expiration"]["Days"] == expire_days


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

    _bucket_is_locked_down(aws("s3"), bucket, expire_days=7)

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
    assert _env(aws, function_arn) == {
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
    transform = _role_statements(iam, stack.resources["TransformRole"])
    (reingest,) = _granting(transform, "firehose:PutRecordBatch")
    assert _resources(reingest) == {stream_arn}
    assert not [s for s in transform if any(a.startswith("kinesis:") for a in _actions(s))]
    delivery = _role_statements(iam, stack.resources["FirehoseRole"])
    (read_secret,) = _granting(delivery, "secretsmanager:GetSecretValue")
    assert _resources(read_secret) == {secret_arn}
    (invoke,) = _granting(delivery, "lambda:InvokeFunction")
    assert _resources(invoke) == {function_arn, f"{function_arn}:*"}
    (put,) = _granting(delivery, "s3:PutObject")
    assert _resources(put) == {f"arn:aws:s3:::{bucket}/firehose/*"}
    (logs_put,) = _granting(
        _role_statements(iam, stack.resources["LogsToFirehoseRole"]), "firehose:PutRecord"
    )
    assert _resources(logs_put) == {stream_arn}


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
    _bucket_is_locked_down(aws("s3"), stack.outputs["BackupBucketName"], expire_days=None)
    env = _env(aws, stack.outputs["TransformFunctionArn"])
    assert env == {"SPLUNK_HEC_ENDPOINT": "event", "EVENT_FORMAT": "auto", "LOG_LEVEL": "INFO"}
    delivery = _role_statements(aws("iam"), stack.resources["FirehoseRole"])
    assert _granting(delivery, "secretsmanager:GetSecretValue") == []


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
    assert _env(aws, function_arn) == {
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

    permissions = _statements(lam.get_policy(FunctionName=out["FunctionName"])["Policy"])
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

    _bucket_is_locked_down(aws("s3"), bucket, expire_days=30)
    statements = _role_statements(aws("iam"), stack.resources["PushRole"])
    (put,) = _granting(statements, "s3:PutObject")
    assert _resources(put) == {f"arn:aws:s3:::{bucket}/push/*"}
    (send,) = _granting(statements, "sqs:SendMessage")
    assert _resources(send) == {queue_arn}
    assert _granting(statements, "secretsmanager:GetSecretValue") == []
    assert not [s for s in statements if _actions(s) & {"s3:GetObject", "s3:ListBucket"}]


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
    env = _env(aws, stack.outputs["FunctionArn"])
    assert env["SPLUNK_HEC_TOKEN_SECRET_ARN"] == secret_arn
    assert "SPLUNK_HEC_TOKEN" not in env
    assert "AdditionalSubscriptionFilter" not in stack.resources
    (read,) = _granting(
        _role_statements(aws("iam"), stack.resources["PushRole"]), "secretsmanager:GetSecretValue"
    )
    assert _resources(read) == {secret_arn}


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
    _bucket_is_locked_down(aws("s3"), out["BacksplashBucketName"], expire_days=30)

    iam = aws("iam")
    role_name = stack.resources["DaemonRole"]
    trust = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in _statements(trust)] == [{"Service": "ec2.amazonaws.com"}]
    profile = iam.get_instance_profile(InstanceProfileName=out["DaemonInstanceProfileName"])
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [role_name]
    statements = _role_statements(iam, role_name)
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{out['CheckpointTableName']}"
    granted = {
        action: _resources(s)
        for s in statements
        if s["Effect"] == "Allow"
        for action in _actions(s)
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
    (allow_s3,) = _statements(attributes["Policy"])
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
    _bucket_is_locked_down(s3, bucket, expire_days=30)
    delivery = [
        s
        for s in _statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        if s["Effect"] == "Allow"
    ]
    assert {s["Principal"]["Service"] for s in delivery} == {"delivery.logs.amazonaws.com"}
    assert {frozenset(_resources(s)) for s in delivery} == {
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
    trust = _statements(iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"])
    assert [s["Principal"] for s in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
    assert trust[0]["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    statements = _role_statements(iam, role_name)
    granted = {
        action: _resources(s)
        for s in statements
        if s["Effect"] == "Allow"
        for action in _actions(s)
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
