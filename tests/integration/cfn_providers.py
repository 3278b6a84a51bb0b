"""moto CloudFormation providers for what moto does not model, and the fixture installing them.

moto's CloudFormation engine resolves parameters, conditions, Ref/GetAtt/Sub/Select/Split and
creates what it models, but it has no provider for some types the templates use
(KinesisFirehose::DeliveryStream, Logs::SubscriptionFilter, Logs::LogStream, Logs::MetricFilter,
S3::BucketPolicy, SQS::QueuePolicy, Lambda::EventInvokeConfig, CloudWatch::Alarm,
CloudWatch::Dashboard), and for others it reads only some properties (S3::Bucket: encryption
and tags; Logs::LogGroup: no KMS key; Lambda::Function: no architecture, KMS key or reserved
concurrency; DynamoDB::Table: no point-in-time recovery; Kinesis::Stream: no encryption). A
provider here plays the CloudFormation resource provider: it receives the properties moto
resolved and makes the service API call CloudFormation would, through boto3 against the same
moto server, so botocore validates every property name and type against the real API model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from moto.cloudformation import parsing
from moto.dynamodb.models.table import Table
from moto.kinesis.models import Stream
from moto.s3.models import FakeBucket

from tests.conftest import boto_client


class Clients:
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


_CLIENTS: Clients | None = None
# A provider's exception becomes an opaque HTTP 500 for create_stack: keep the reason.
PROVIDER_ERRORS: list[str] = []


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
            PROVIDER_ERRORS.append(f"{cls.cfn_type} {name}: {exc}")
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
            PROVIDER_ERRORS.append(f"{cls.cfn_type} {resource_name}: {exc}")
            raise
        return resource

    @classmethod
    def apply(cls, resource: Any, props: dict[str, Any]) -> None:
        raise NotImplementedError


class _Table(_Augmented):
    cfn_type = "AWS::DynamoDB::Table"
    base = Table

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        # moto hands SSESpecification over in CloudFormation's shape (SSEEnabled); its table
        # reads the API's (Enabled), as CloudFormation's own provider translates it.
        props = dict(cloudformation_json.get("Properties", {}))
        if "SSESpecification" in props:
            sse = dict(props["SSESpecification"])
            sse["Enabled"] = str(sse.pop("SSEEnabled")).lower() == "true"
            props["SSESpecification"] = sse
        return super().create_from_cloudformation_json(
            resource_name,
            {**cloudformation_json, "Properties": props},
            account_id,
            region_name,
            **kwargs,
        )

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
            PROVIDER_ERRORS.append(f"{cls.cfn_type} {bucket.name}: {exc}")
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
    _CLIENTS = Clients(moto_server)
    try:
        yield moto_server
    finally:
        _CLIENTS.close()
        _CLIENTS = None
        parsing.get_model_map.cache_clear()
        with requests.Session() as session:
            session.post(f"{moto_server}/moto-api/reset", timeout=10)
