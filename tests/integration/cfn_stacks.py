"""Deploying a template into moto's CloudFormation (server mode, with the providers of
`tests.integration.cfn_providers`) and reading what it made back through the AWS APIs."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode  # type: ignore[import-untyped]

from tests.integration.cfn_providers import PROVIDER_ERRORS, Clients

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
#: The marks of every test module that deploys stacks: moto's Firehose stores a Splunk
#: destination as given but warns that it does not deliver to it; the warning is raised in
#: moto's server thread while a stack is created.
CFN_MARKS = [
    pytest.mark.integration,
    pytest.mark.filterwarnings(
        "ignore:A Splunk destination delivery stream is not yet implemented:UserWarning"
    ),
]


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
    clients = Clients(moto_cfn)
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
        PROVIDER_ERRORS.clear()
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
            pytest.fail(f"create_stack failed: {exc!r}; providers said: {PROVIDER_ERRORS}")
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


def policy_statements(document: Any) -> list[dict[str, Any]]:
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


def env_of(aws: Callable[[str], Any], function: str) -> dict[str, str]:
    """A function's environment, values as strings (moto keeps Number parameters as ints
    where CloudFormation hands Lambda strings)."""
    config = aws("lambda").get_function_configuration(FunctionName=function)
    return {k: str(v) for k, v in config["Environment"]["Variables"].items()}


def role_statements(iam: Any, role_name: str) -> list[dict[str, Any]]:
    """Every statement of every inline policy of a role."""
    out: list[dict[str, Any]] = []
    for policy in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        out += policy_statements(
            iam.get_role_policy(RoleName=role_name, PolicyName=policy)["PolicyDocument"]
        )
    return out


def actions(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def resources(statement: dict[str, Any]) -> set[str]:
    resource = statement["Resource"]
    return {resource} if isinstance(resource, str) else set(resource)


def granting(statements: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [s for s in statements if s["Effect"] == "Allow" and action in actions(s)]


def bucket_is_locked_down(s3: Any, bucket: str, *, expire_days: int | None) -> None:
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
        for s in policy_statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        if s["Effect"] == "Deny"
    ]
    assert len(deny) == 1
    assert deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert resources(deny[0]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
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
