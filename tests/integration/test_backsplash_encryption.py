"""Backsplash objects keep correct encryption with either bucket setting the templates offer:
SSE-S3 by default, or SSE-KMS with a customer-managed key (``KmsKeyArn``). The forwarder sends
no encryption header, so S3's bucket default decides; a header would override the bucket's key
(or be refused by a bucket policy that requires it)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import Backsplash
from tests.conftest import boto_client
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Request parameters that set an object's encryption (PutObject, CopyObject, multipart).
SSE_PARAMETERS = frozenset(
    {
        "ServerSideEncryption",
        "SSEKMSKeyId",
        "SSEKMSEncryptionContext",
        "BucketKeyEnabled",
        "SSECustomerAlgorithm",
        "SSECustomerKey",
    }
)


def _bucket(s3: Any, name: str, default: dict[str, Any]) -> str:
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [default]})
    return name


def _write(s3: Any, bucket: str) -> str:
    backsplash = Backsplash(s3, bucket, "push/", sleep=lambda seconds: None)
    return backsplash.write(
        [EncodedEvent(b'{"event":"one"}', "id-1")],
        Failure(
            error_code="Splunk.ServerError",
            error_message="503",
            attempts=3,
            endpoint="event",
            arrival_ms=1741064000000,
        ),
    )


def test_objects_take_the_sse_s3_default(aws_endpoint: str) -> None:
    """GIVEN a bucket encrypting with SSE-S3 WHEN the forwarder backsplashes THEN the object is
    AES256-encrypted and names no KMS key."""
    s3 = boto_client("s3", aws_endpoint)
    bucket = _bucket(
        s3, "backsplash-sse-s3", {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    )
    head = s3.head_object(Bucket=bucket, Key=_write(s3, bucket))
    assert head["ServerSideEncryption"] == "AES256"
    assert "SSEKMSKeyId" not in head


def test_objects_take_the_bucket_kms_key(aws_endpoint: str) -> None:
    """GIVEN a bucket encrypting with a customer-managed KMS key (bucket keys on) WHEN the
    forwarder backsplashes THEN the object is encrypted with that key."""
    s3 = boto_client("s3", aws_endpoint)
    key_arn = boto_client("kms", aws_endpoint).create_key()["KeyMetadata"]["Arn"]
    bucket = _bucket(
        s3,
        "backsplash-sse-kms",
        {
            "ApplyServerSideEncryptionByDefault": {
                "SSEAlgorithm": "aws:kms",
                "KMSMasterKeyID": key_arn,
            },
            "BucketKeyEnabled": True,
        },
    )
    head = s3.head_object(Bucket=bucket, Key=_write(s3, bucket))
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn


def test_no_s3_write_sets_its_own_encryption() -> None:
    """GIVEN every S3 call in the runtime packages WHEN it writes or copies an object THEN it
    passes no encryption parameter, so the bucket default (either setting) applies."""
    writes = 0
    for path in sorted((ROOT / "forwarder").rglob("*.py")):
        if "devtools" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in ("put_object", "copy_object", "create_multipart_upload"):
                continue
            writes += 1
            keywords = {k.arg for k in node.keywords}
            assert not keywords & SSE_PARAMETERS, f"{path.name}:{node.lineno}"
            assert None not in keywords, f"{path.name}:{node.lineno}: **kwargs could hide one"
    assert writes >= 2  # the backsplash writer's put and replay's archive copy
