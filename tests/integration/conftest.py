"""Delivery fixtures: the HEC emulator, a backsplash bucket on the moto server, event makers."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from forwarder.backsplash.writers import Backsplash
from forwarder.devtools.emulator import HecEmulator
from tests.conftest import TEST_TOKEN, boto_client, make_settings
from transforms.records import EncodedEvent

BUCKET = "backsplash-test"
PREFIX = "failed/"
FLOW_LINE = (
    "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 52.94.1.{n} 49152 443 6 10 8400 "
    "1764000000 1764000060 ACCEPT OK"
)

#: Fast settings for tests: tiny backoff, quick polls; each test overrides what it exercises.
FAST = {
    "SPLUNK_HEC_TOKEN": TEST_TOKEN,
    "SPLUNK_HEC_ACK_POLL_INTERVAL": "0.02",
    "SPLUNK_HEC_ACK_TIMEOUT": "5",
    "SPLUNK_HEC_RETRY_DURATION": "10",
    "SPLUNK_HEC_RETRY_BACKOFF_BASE": "0.001",
    "SPLUNK_HEC_RETRY_BACKOFF_MAX": "0.01",
    "SPLUNK_HEC_UNHEALTHY_COOLDOWN": "0.05",
    "SPLUNK_HEC_CONNECT_TIMEOUT": "1",
    "SPLUNK_HEC_READ_TIMEOUT": "5",
    "SPLUNK_HEC_BATCH_MAX_BYTES": "4096",
    "BACKSPLASH_BUCKET": BUCKET,
    "BACKSPLASH_PREFIX": PREFIX,
}


def delivery_settings(*urls: str, **environ: str) -> Settings:
    """Settings for the emulator at ``urls`` with FAST defaults and ``environ`` on top."""
    return make_settings(**{**FAST, "SPLUNK_HEC_URL": ",".join(urls), **environ})


def flow_events(count: int, *, start: int = 0) -> list[EncodedEvent]:
    """Event-endpoint flow-log events; each carries its id in an indexed field."""
    return [
        EncodedEvent(
            json.dumps(
                {
                    "time": 1764000000 + i,
                    "sourcetype": "aws:cloudwatchlogs:vpcflow",
                    "source": "/aws/vpc/flowlogs:eni-0a1b2c3d4e5f60718",
                    "event": FLOW_LINE.format(n=i % 250),
                    "fields": {"event_id": f"{i:056d}"},
                },
                separators=(",", ":"),
            ).encode(),
            f"{i:056d}",
        )
        for i in range(start, start + count)
    ]


def indexed_ids(emulator: HecEmulator) -> list[str]:
    """Event ids the emulator indexed (duplicates included), event endpoint."""
    return [str(event["fields"]["event_id"]) for event in emulator.indexed_events()]


def backsplashed(s3: Any, bucket: str = BUCKET) -> list[dict[str, Any]]:
    """Every record in the backsplash bucket, read back through Backsplash.read."""
    reader = Backsplash(s3, bucket, PREFIX)
    return [record for key in reader.list_keys() for record in reader.read(key)]


def raw_payload(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["rawData"])


@pytest.fixture(name="emulator")
def fixture_emulator() -> Iterator[HecEmulator]:
    """A HEC emulator with acks on, accepting TEST_TOKEN."""
    with HecEmulator(token=TEST_TOKEN) as emulator:
        yield emulator


@pytest.fixture(name="s3")
def fixture_s3(aws_endpoint: str) -> Any:
    """An S3 client on the moto server with the backsplash bucket created."""
    client = boto_client("s3", aws_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(name="backsplash")
def fixture_backsplash(s3: Any) -> Backsplash:
    """The S3 backsplash on the moto server (no real sleeps between its retries)."""
    return Backsplash(s3, BUCKET, PREFIX, sleep=lambda seconds: None)


def self_signed_certificate(tmp_path: Path, common_name: str, alt_name: Any) -> tuple[Path, Path]:
    """A self-signed CA certificate and its key (PEM files in ``tmp_path``).

    Args:
        tmp_path: where to write ``cert.pem`` and ``key.pem``.
        common_name: the subject's CN.
        alt_name: the one subjectAltName (``x509.DNSName(...)`` or ``x509.IPAddress(...)``).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
