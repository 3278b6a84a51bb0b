"""The daemon's [daemon] and [source] tables: defaults, validation, environment overrides."""

from __future__ import annotations

import pytest

from config.daemon import DaemonSettings, SourceSettings, load_daemon_settings
from config.errors import ConfigError
from config.loader import load_settings


def test_defaults_are_a_stdin_daemon() -> None:
    settings = load_daemon_settings({})
    assert settings == DaemonSettings()
    assert settings.source == SourceSettings(type="stdin")
    assert settings.shutdown_grace_s == 30.0


def test_kinesis_with_dynamodb() -> None:
    settings = load_daemon_settings(
        {
            "source": {
                "type": "kinesis",
                "stream_name": "logs",
                "shard_ids": ["shardId-000000000000"],
                "start_position": "LATEST",
                "poll_interval_s": 0.5,
            },
            "daemon": {
                "checkpoint_store": "dynamodb",
                "checkpoint_table": "ckpt",
                "shutdown_grace_s": 10,
                "metrics_port": 0,
            },
        }
    )
    assert settings.source.shard_ids == ("shardId-000000000000",)
    assert settings.source.start_position == "LATEST"
    assert settings.checkpoint_table == "ckpt"
    assert settings.shutdown_grace_s == 10.0
    assert settings.metrics_port == 0


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"source": {"type": "kinesis"}}, "source.stream_name"),
        ({"source": {"type": "sqs-s3"}}, "source.queue_url"),
        ({"source": {"type": "files"}}, "source.paths"),
        ({"source": {"type": "tcp"}}, "source.type"),
        ({"source": {"type": "kinesis", "stream_name": ""}}, "source.stream_name"),
        ({"source": {"type": "stdin", "max_records": 0}}, "source.max_records"),
        ({"source": {"type": "stdin", "start_position": "AT_TIMESTAMP"}}, "source.start_position"),
        ({"source": {"type": "stdin", "wait_time_s": 21}}, "source.wait_time_s"),
        ({"source": {"nonsense": 1}}, "source.nonsense"),
        ({"daemon": {"shutdown_grace_s": "soon"}}, "daemon.shutdown_grace_s"),
        ({"daemon": {"metrics_port": 70000}}, "daemon.metrics_port"),
        ({"daemon": {"metrics_port": 1.5}}, "daemon.metrics_port"),
        ({"daemon": {"metrics_enabled": "maybe"}}, "daemon.metrics_enabled"),
        ({"daemon": {"checkpoint_store": "dynamodb"}}, "daemon.checkpoint_table"),
        ({"daemon": {"checkpoint_store": "redis"}}, "daemon.checkpoint_store"),
        ({"daemon": {"source_retry_backoff_s": 0}}, "daemon.source_retry_backoff_s"),
        ({"source": {"answer_timeout_s": 170}}, "source.answer_timeout_s"),
        ({"source": {"max_connections": 0}}, "source.max_connections"),
        ({"source": {"request_timeout_s": 0}}, "source.request_timeout_s"),
        (
            {"daemon": {"source_retry_backoff_s": 5, "source_retry_backoff_max_s": 1}},
            "daemon.source_retry_backoff_max_s",
        ),
        ({"daemon": 3}, "daemon"),
        ({"source": {"type": "firehose-http"}}, "source.access_key"),
        ({"source": {"type": "firehose-http", "access_key": ""}}, "source.access_key"),
        ({"source": {"type": "firehose-http", "access_key": "k", "port": 70000}}, "source.port"),
        ({"source": {"access_key": "k", "max_body_bytes": 10}}, "source.max_body_bytes"),
        ({"source": {"access_key": "k", "max_in_flight": 0}}, "source.max_in_flight"),
        ({"source": {"access_key": "k", "tls_cert_path": "c.pem"}}, "source.tls_key_path"),
        ({"source": {"access_key": "k", "tls_key_path": "k.pem"}}, "source.tls_cert_path"),
    ],
)
def test_invalid_values_name_their_key(document: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_daemon_settings(document)
    assert caught.value.key == key


def test_environment_overrides_the_file() -> None:
    settings = load_daemon_settings(
        {"source": {"type": "kinesis", "stream_name": "a"}, "daemon": {"metrics_port": 1}},
        {"FORWARDER_SOURCE_STREAM_NAME": "b", "FORWARDER_DAEMON_METRICS_PORT": "9200"},
    )
    assert settings.source.stream_name == "b"
    assert settings.metrics_port == 9200


def test_files_paths_from_a_comma_list() -> None:
    settings = load_daemon_settings({"source": {"type": "files", "paths": "a.log, b.log"}})
    assert settings.source.paths == ("a.log", "b.log")


def test_each_parser_takes_its_own_part_of_one_document() -> None:
    """One parsed file feeds both: the settings loader skips [source] and [daemon], the daemon
    parser skips the top-level keys and [[routes]]."""
    document = {
        "splunk_index": "x",
        "routes": [{"log_group": "/a", "index": "y"}],
        "source": {"type": "files", "paths": ["a.log"]},
        "daemon": {"metrics_port": 9200},
    }
    settings = load_settings(environ={}, document=document)
    assert settings.transform.default_index == "x"
    assert [route.index for route in settings.transform.routes] == ["y"]
    daemon = load_daemon_settings(document)
    assert daemon.source.paths == ("a.log",) and daemon.metrics_port == 9200


def test_firehose_http_source() -> None:
    settings = load_daemon_settings(
        {
            "source": {
                "type": "firehose-http",
                "host": "0.0.0.0",
                "port": 443,
                "max_body_bytes": 1 << 20,
                "max_in_flight": 8,
                "tls_cert_path": "cert.pem",
                "tls_key_path": "key.pem",
            }
        },
        {"FORWARDER_SOURCE_ACCESS_KEY": "s3cr3t-key"},
    )
    source = settings.source
    assert (source.type, source.host, source.port) == ("firehose-http", "0.0.0.0", 443)
    assert (source.max_body_bytes, source.max_in_flight) == (1 << 20, 8)
    assert (source.tls_cert_path, source.tls_key_path) == ("cert.pem", "key.pem")
    assert source.access_key == "s3cr3t-key"
    assert "s3cr3t-key" not in repr(settings)


def test_firehose_http_defaults() -> None:
    source = load_daemon_settings({"source": {"type": "firehose-http", "access_key": "k"}}).source
    assert (source.host, source.port, source.max_in_flight) == ("127.0.0.1", 8443, 4)
    assert source.max_body_bytes == 16 << 20
    assert source.tls_cert_path is None
    assert (source.max_connections, source.request_timeout_s) == (1024, 30.0)
    # Firehose waits 3 minutes for an answer: the default settles a request well before.
    assert source.answer_timeout_s == 150.0


def test_source_retry_backoff_is_settable_from_the_environment() -> None:
    settings = load_daemon_settings(
        {"daemon": {"source_retry_backoff_s": 2}},
        {"FORWARDER_DAEMON_SOURCE_RETRY_BACKOFF_MAX_S": "120"},
    )
    assert (settings.source_retry_backoff_s, settings.source_retry_backoff_max_s) == (2.0, 120.0)
