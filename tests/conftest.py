"""Shared fixtures: settings built from dicts, a moto server on loopback, log capture hygiene."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import settings as hypothesis_settings

from config.loader import load_settings
from config.settings import Settings

# Hypothesis' per-example deadline is a timing threshold; on a loaded CI machine it fails
# tests for being slow, not wrong. Properties here are about behaviour only.
hypothesis_settings.register_profile("forwarder", deadline=None)
hypothesis_settings.load_profile("forwarder")

SAMPLES = Path(__file__).parent / "samples"
TEST_TOKEN = "00000000-test-token-0000-000000000000"


def make_settings(**environ: str) -> Settings:
    """Settings from environment-style keys, e.g. make_settings(SPLUNK_HEC_ACK="false")."""
    return load_settings(environ={key: str(value) for key, value in environ.items()})


def load_sample(name: str) -> bytes:
    """The bytes of a file under tests/samples."""
    return (SAMPLES / name).read_bytes()


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults, so capture_logs() sees everything."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(name="aws_env")
def fixture_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and a region, so no test can reach a real AWS account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture(name="moto_server", scope="session")
def fixture_moto_server() -> Iterator[str]:
    """A moto server in server mode on loopback, shared by the session; yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(name="aws_endpoint")
def fixture_aws_endpoint(
    moto_server: str, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point every boto3 client at the moto server through AWS_ENDPOINT_URL, then reset it."""
    import requests

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    yield moto_server
    with requests.Session() as session:
        session.post(f"{moto_server}/moto-api/reset", timeout=10)


@pytest.fixture(name="atomic_dynamodb_server", scope="session")
def fixture_atomic_dynamodb_server() -> Iterator[str]:
    """moto in server mode, handling one request at a time; yields its URL.

    DynamoDB makes each request atomic: two conditional writes to one item never both pass
    their condition. moto checks a condition and then writes, without a lock, so requests
    racing through the threaded server can both pass (two lease owners at once). Behind
    this lock each request is atomic again. It shares moto's in-process backends (and the
    reset) with ``moto_server``.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ: Any, start_response: Any) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    server = make_server(
        "127.0.0.1", free_port(), one_at_a_time, True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="atomic-moto", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture(name="dynamodb_endpoint")
def fixture_dynamodb_endpoint(
    aws_endpoint: str, atomic_dynamodb_server: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Every DynamoDB client goes to :func:`fixture_atomic_dynamodb_server` (through
    ``AWS_ENDPOINT_URL_DYNAMODB``), the other services to ``moto_server``."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", atomic_dynamodb_server)
    return atomic_dynamodb_server


def boto_client(service: str, endpoint: str) -> Any:
    """A boto3 client against the moto server."""
    import boto3

    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_checkpoint_table(dynamodb: Any, table: str) -> None:
    """The daemon's DynamoDB checkpoint table, keyed as daemon.yaml creates it."""
    dynamodb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "stream_name", "KeyType": "HASH"},
            {"AttributeName": "shard_id", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "stream_name", "AttributeType": "S"},
            {"AttributeName": "shard_id", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def create_replay_state_table(dynamodb: Any, table: str) -> None:
    """The replay state table (``--state dynamodb://TABLE``): string ``pk`` and ``sk``."""
    dynamodb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
