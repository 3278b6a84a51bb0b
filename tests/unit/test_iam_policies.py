"""Least privilege in the CloudFormation templates, checked on their structure.

Every policy statement is read from the templates as written (both branches of each Fn::If),
so these hold for every combination of parameters, not only the ones a deployment test picks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode  # type: ignore[import-untyped]

TEMPLATES = Path(__file__).resolve().parents[2] / "cloudformation"
TEMPLATE_NAMES = ("firehose-to-splunk.yaml", "push-to-splunk.yaml", "daemon.yaml")
NO_VALUE = {"Ref": "AWS::NoValue"}
#: The one statement whose resource is `*`: the network-interface actions Lambda needs in a VPC
#: (AWS documents DescribeNetworkInterfaces as working only on "*"; the function's ENIs do not
#: exist when the role is written). Granted only with SubnetIds set.
VPC_SID = "VpcNetworkInterfaces"
VPC_ACTIONS = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
]
KMS_PAIR = ["kms:GenerateDataKey", "kms:Decrypt"]
_SUB_NAME = re.compile(r"\$\{([^}!][^}]*)\}")


def load(name: str) -> dict[str, Any]:
    """A template as a dict, parsed by cfn-lint's decoder (short-form tags understood)."""
    template, matches = decode(str(TEMPLATES / name))
    assert not matches, matches
    return dict(template)


def branches(node: Any) -> Iterator[Any]:
    """Every value ``node`` can take: Fn::If expanded both ways, AWS::NoValue dropped."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, when_true, when_false = node["Fn::If"]
        yield from branches(when_true)
        yield from branches(when_false)
    elif node != NO_VALUE:
        yield node


def as_list(node: Any) -> list[Any]:
    """A statement's Action/Resource/Statement as a list, each Fn::If expanded."""
    items = node if isinstance(node, list) else [node]
    return [value for item in items for value in branches(item)]


def policy_documents(template: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(resource, kind, document)`` for every permissions policy in the template.

    ``kind`` is ``identity`` (roles, policies) or ``resource`` (bucket and queue policies).
    Trust policies are covered by `test_trust_policies_name_one_service`.
    """
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        props = resource.get("Properties", {})
        if kind == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                yield logical_id, "identity", policy["PolicyDocument"]
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, "identity", props["PolicyDocument"]
        elif kind in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"):
            yield logical_id, "resource", props["PolicyDocument"]


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A document's statements, each Fn::If expanded."""
    return as_list(document["Statement"])


def referenced_names(node: Any) -> set[str]:
    """Parameters, resources and pseudo parameters an expression refers to."""
    names: set[str] = set()
    if isinstance(node, dict):
        if "Ref" in node:
            names.add(str(node["Ref"]))
        elif "Fn::GetAtt" in node:
            target = node["Fn::GetAtt"]
            names.add(str(target[0] if isinstance(target, list) else target.split(".")[0]))
        elif "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
            for match in _SUB_NAME.findall(text):
                name = match.split(".")[0]
                if name not in variables:
                    names.add(name)
            for value in variables.values():
                names |= referenced_names(value)
        else:
            for value in node.values():
                names |= referenced_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= referenced_names(value)
    return names


def roles_of(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement granted to role ``role``: inline policies and attached AWS::IAM::Policy."""
    out: list[dict[str, Any]] = []
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if logical_id == role:
            for policy in props.get("Policies", []):
                out += statements(policy["PolicyDocument"])
        elif resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in props.get("Roles", []):
            out += statements(props["PolicyDocument"])
    return out


def role_of_function(template: dict[str, Any], function: str) -> str:
    role = template["Resources"][function]["Properties"]["Role"]
    assert set(role) == {"Fn::GetAtt"}, role
    return str(role["Fn::GetAtt"][0])


def all_statements(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    template = load(name)
    return [
        (logical_id, kind, statement)
        for logical_id, kind, document in policy_documents(template)
        for statement in statements(document)
    ]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_no_statement_allows_every_action_on_every_resource(name: str) -> None:
    """GIVEN every policy statement WHEN it allows THEN neither `*` action nor `*` resource."""
    checked = 0
    for logical_id, _, statement in all_statements(name):
        if statement["Effect"] != "Allow" or statement.get("Sid") == VPC_SID:
            continue  # the VPC statement's `*` is checked by test_vpc_grant_only_with_a_vpc
        checked += 1
        actions = as_list(statement["Action"])
        assert "*" not in actions, (logical_id, statement)
        assert not [a for a in actions if isinstance(a, str) and a.endswith(":*")], logical_id
        assert "*" not in as_list(statement.get("Resource", [])), (logical_id, statement)
        assert "NotAction" not in statement and "NotResource" not in statement, logical_id
        principal = statement.get("Principal")
        assert principal not in ("*", {"AWS": "*"}), (logical_id, statement)
    assert checked > 0


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_identity_permission_is_scoped_to_the_stack(name: str) -> None:
    """GIVEN a role's statement WHEN it allows THEN each resource names one of the stack's
    resources or parameters (not an account-wide pattern built from pseudo parameters alone)."""
    template = load(name)
    own = set(template["Resources"]) | set(template.get("Parameters", {}))
    for logical_id, kind, statement in all_statements(name):
        if kind != "identity" or statement["Effect"] != "Allow" or statement.get("Sid") == VPC_SID:
            continue
        for resource in as_list(statement["Resource"]):
            names = referenced_names(resource)
            assert names & own, f"{logical_id}: {resource} is not scoped to the stack"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_trust_policies_name_one_service(name: str) -> None:
    """GIVEN each role WHEN someone may assume it THEN it is exactly one AWS service."""
    template = load(name)
    roles = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert roles
    for role in roles:
        for statement in statements(role["Properties"]["AssumeRolePolicyDocument"]):
            assert statement["Action"] == "sts:AssumeRole"
            assert set(statement["Principal"]) == {"Service"}
            assert isinstance(statement["Principal"]["Service"], str)
            assert statement["Principal"]["Service"].endswith(".amazonaws.com")


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_each_function_has_its_own_lambda_role(name: str) -> None:
    """GIVEN the Lambda functions WHEN their roles are compared THEN none is shared and each
    trusts only lambda.amazonaws.com."""
    template = load(name)
    functions = [
        k for k, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"
    ]
    roles = [role_of_function(template, f) for f in functions]
    assert len(set(roles)) == len(roles)
    for role in roles:
        trust = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]
        assert [s["Principal"] for s in statements(trust)] == [{"Service": "lambda.amazonaws.com"}]


def test_transform_reingests_only_into_its_own_stream() -> None:
    """GIVEN the Firehose template WHEN the transform's role may put records THEN only into the
    delivery stream whose processor is that very function, and never into Kinesis."""
    template = load("firehose-to-splunk.yaml")
    resources = template["Resources"]
    (stream_id,) = [
        k for k, r in resources.items() if r["Type"] == "AWS::KinesisFirehose::DeliveryStream"
    ]
    processors = resources[stream_id]["Properties"]["SplunkDestinationConfiguration"][
        "ProcessingConfiguration"
    ]["Processors"]
    lambda_arns = [
        p["ParameterValue"]
        for proc in processors
        for p in proc["Parameters"]
        if p["ParameterName"] == "LambdaArn"
    ]
    assert len(lambda_arns) == 1 and set(lambda_arns[0]) == {"Fn::GetAtt"}
    function = lambda_arns[0]["Fn::GetAtt"][0]
    assert resources[function]["Properties"]["Handler"] == "transforms.firehose.handler"

    granted = roles_of(template, role_of_function(template, function))
    puts = [
        s
        for s in granted
        if any(a.startswith(("firehose:", "kinesis:")) for a in as_list(s["Action"]))
    ]
    assert puts, "the transform must be allowed to re-ingest what does not fit its response"
    for statement in puts:
        assert as_list(statement["Action"]) == ["firehose:PutRecordBatch"]
        assert as_list(statement["Resource"]) == [{"Fn::GetAtt": [stream_id, "Arn"]}]


def test_logs_may_put_only_into_their_destination() -> None:
    """GIVEN the roles CloudWatch Logs assumes WHEN they grant puts THEN only into the stack's
    own stream (Firehose or Kinesis) that the subscription filter names."""
    for name in ("firehose-to-splunk.yaml", "daemon.yaml"):
        template = load(name)
        for resource in template["Resources"].values():
            if resource["Type"] != "AWS::Logs::SubscriptionFilter":
                continue
            props = resource["Properties"]
            role = props["RoleArn"]["Fn::GetAtt"][0]
            for statement in roles_of(template, role):
                if statement.get("Sid") == "EncryptWithKmsKey":
                    continue  # test_kms_grants_only_with_a_key
                assert as_list(statement["Resource"]) == [props["DestinationArn"]], name


#: The templates with the optional drain Lambda (its role reads the token secret too).
DRAIN_TEMPLATES = ("firehose-to-splunk.yaml", "push-to-splunk.yaml")


def test_secret_grant_is_exactly_the_given_secret() -> None:
    """GIVEN any template WHEN it grants secretsmanager:GetSecretValue THEN on the ARN
    parameter alone, and only under the condition that the parameter is set."""
    for name in TEMPLATE_NAMES:
        template = load(name)
        found = 0
        for _, _, document in policy_documents(template):
            raw = document["Statement"]
            for entry in raw if isinstance(raw, list) else [raw]:
                expanded = list(branches(entry))
                secret = [
                    s for s in expanded if "secretsmanager:GetSecretValue" in as_list(s["Action"])
                ]
                if not secret:
                    continue
                found += 1
                assert entry == {"Fn::If": ["UseTokenSecret", secret[0], NO_VALUE]}, name
                assert as_list(secret[0]["Action"]) == ["secretsmanager:GetSecretValue"]
                assert as_list(secret[0]["Resource"]) == [{"Ref": "HECTokenSecretArn"}]
        # The function (or Firehose, or the daemon) that sends, and the drain Lambda.
        assert found == (2 if name in DRAIN_TEMPLATES else 1), name
        assert template["Conditions"]["UseTokenSecret"] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": "HECTokenSecretArn"}, ""]}]
        }


def _conditional_statements(template: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(role, raw statement entry)`` for every entry of every identity policy, unexpanded."""
    for logical_id, kind, document in policy_documents(template):
        if kind != "identity":
            continue
        raw = document["Statement"]
        yield from ((logical_id, entry) for entry in (raw if isinstance(raw, list) else [raw]))


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_kms_grants_only_with_a_key(name: str) -> None:
    """GIVEN any template WHEN a role may use a KMS key THEN only under HasKmsKey, only on the
    KmsKeyArn parameter, and only kms:GenerateDataKey/kms:Decrypt (a producer into Kinesis
    needs only the first)."""
    template = load(name)
    assert template["Conditions"]["HasKmsKey"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}]
    }
    roles = set()
    for role, entry in _conditional_statements(template):
        expanded = [s for s in branches(entry) if s]
        kms = [s for s in expanded if any(str(a).startswith("kms:") for a in as_list(s["Action"]))]
        if not kms:
            continue
        (statement,) = kms
        assert entry == {"Fn::If": ["HasKmsKey", statement, NO_VALUE]}, (name, role)
        assert as_list(statement["Resource"]) == [{"Ref": "KmsKeyArn"}], (name, role)
        actions = as_list(statement["Action"])
        assert actions in (KMS_PAIR, ["kms:GenerateDataKey"]), (name, role)
        roles.add(role)
    expected = {
        "firehose-to-splunk.yaml": {"TransformRole", "FirehoseRole", "DrainRole"},
        "push-to-splunk.yaml": {"PushRole", "DrainRole"},
        "daemon.yaml": {"DaemonRole", "LogsToKinesisRole"},
    }[name]
    assert roles == expected


@pytest.mark.parametrize("name", ["firehose-to-splunk.yaml", "push-to-splunk.yaml"])
def test_vpc_grant_only_with_a_vpc(name: str) -> None:
    """GIVEN a Lambda template WHEN a role may manage network interfaces THEN only the
    function's role, only under HasVpcConfig, with exactly the actions Lambda documents."""
    template = load(name)
    found = []
    for role, entry in _conditional_statements(template):
        expanded = [s for s in branches(entry) if s]
        ec2 = [s for s in expanded if any(str(a).startswith("ec2:") for a in as_list(s["Action"]))]
        if not ec2:
            continue
        (statement,) = ec2
        assert entry == {"Fn::If": ["HasVpcConfig", statement, NO_VALUE]}, role
        assert statement["Sid"] == VPC_SID
        assert as_list(statement["Action"]) == VPC_ACTIONS
        found.append(role)
    functions = [
        k for k, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"
    ]
    assert found == [role_of_function(template, f) for f in functions]
    for function in functions:
        props = template["Resources"][function]["Properties"]
        assert props["VpcConfig"] == {
            "Fn::If": [
                "HasVpcConfig",
                {
                    "SubnetIds": {"Ref": "SubnetIds"},
                    "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
                },
                NO_VALUE,
            ]
        }
