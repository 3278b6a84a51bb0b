"""``[destinations.NAME]`` tables and ``destination =`` on routes: parsing, validation, and
what the transform makes of them (README "Destinations")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.destinations import require_single_destination
from config.errors import ConfigError
from config.loader import load_settings, require_hec, warnings_for
from config.logs import redact_text as redact
from config.settings import Settings
from forwarder.secrets import clear_cache, resolve_token
from transforms import firehose
from transforms.options import Route
from transforms.pipeline import transform_lines

BASE = 'splunk_hec_url = "https://main.example.com:8088"\nsplunk_hec_token = "main-token"\n'


def settings_of(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "forwarder.toml"
    path.write_text(BASE + text)
    return load_settings({}, path)


TWO = """
splunk_hec_ack_timeout = 5
[destinations.security]
hec_url = ["https://sec-1.example.com:8088/services/collector", "https://sec-2.example.com:8088"]
token = "sec-token"
endpoint = "raw"
ack = false
concurrency = 4
verify_tls = false
backsplash_prefix = "security"

[[routes]]
log_group = "/aws/cloudtrail*"
destination = "security"
"""


def test_a_destination_is_the_top_level_settings_with_its_keys_replaced(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, TWO)
    assert settings.destination_names == ("default", "security")
    (dest,) = settings.destinations
    assert dest.hec.urls == ("https://sec-1.example.com:8088", "https://sec-2.example.com:8088")
    assert dest.hec.token == "sec-token"
    assert dest.hec.endpoint == "raw"
    assert dest.hec.verify_tls is False
    assert dest.acks.enabled is False
    assert dest.acks.timeout_s == 5  # inherited from the top level
    assert dest.hec.concurrency == 4
    assert dest.backsplash_prefix == "security/"
    full = settings.for_destination("security")
    assert full.hec == dest.hec and full.acks == dest.acks
    assert full.backsplash.prefix == "security/"
    assert full.retry == settings.retry and full.batching == settings.batching
    assert settings.for_destination("default") is settings
    with pytest.raises(KeyError):
        settings.for_destination("nowhere")
    # The top level is untouched: it is the default destination.
    assert settings.hec.urls == ("https://main.example.com:8088",)
    assert settings.hec.endpoint == "event" and settings.acks.enabled


def test_the_token_never_shows_in_repr_or_logs(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, TWO)
    assert "sec-token" not in repr(settings)
    assert "sec-token" not in redact("Authorization: Splunk sec-token")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[destinations.a]\ntoken = "s3cr3t"\n', "destinations.a.hec_url"),
        ('[destinations.a]\nhec_url = "ftp://x"\ntoken = "s3cr3t"\n', "destinations.a.hec_url"),
        ('[destinations.a]\nhec_url = []\ntoken = "s3cr3t"\n', "destinations.a.hec_url"),
        ('[destinations.a]\nhec_url = "https://x"\n', "destinations.a.token"),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\ntoken_secret_arn = "arn"\n',
            "destinations.a.token",
        ),
        ('[destinations.a]\nhec_url = "https://x"\ntoken = "s3 cr3t"\n', "destinations.a.token"),
        ('[destinations.a]\nhec_url = "https://x"\ntoken = 5\n', "destinations.a.token"),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nendpoint = "json"\n',
            "destinations.a.endpoint",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nack = "maybe"\n',
            "destinations.a.ack",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nconcurrency = 0\n',
            "destinations.a.concurrency",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nconcurrency = "fast"\n',
            "destinations.a.concurrency",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nverify_tls = 3\n',
            "destinations.a.verify_tls",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nca_bundle = "/no.pem"\n',
            "destinations.a.ca_bundle",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nbacksplash_prefix = 1\n',
            "destinations.a.backsplash_prefix",
        ),
        (
            '[destinations.a]\nhec_url = "https://x"\ntoken = "s3cr3t"\nindex = "x"\n',
            "destinations.a.index",
        ),
        (
            '[destinations.default]\nhec_url = "https://x"\ntoken = "s3cr3t"\n',
            "destinations.default",
        ),
        ('[destinations."a b"]\nhec_url = "https://x"\ntoken = "s3cr3t"\n', "destinations.a b"),
        ("destinations = 3\n", "destinations"),
        ("[destinations]\na = 3\n", "destinations.a"),
        ('[[routes]]\nlog_group = "/x"\ndestination = "nowhere"\n', "routes[1].destination"),
        ('[[routes]]\nlog_group = "/x"\ndestination = ""\n', "routes[1].destination"),
    ],
)
def test_errors_name_the_destination_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_of(tmp_path, text)
    assert caught.value.key == key
    assert "s3cr3t" not in str(caught.value) and "s3 cr3t" not in str(caught.value)


def test_an_unknown_destination_error_names_the_rule_and_the_known_ones(tmp_path: Path) -> None:
    text = TWO + '[[routes]]\nlog_group = "/x"\nindex = "a"\n[[routes]]\ndestination = "secops"\n'
    with pytest.raises(ConfigError, match=r"routes\[3\]\.destination.*known: default, security"):
        settings_of(tmp_path, text)


def test_default_may_be_named_by_a_route(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, '[[routes]]\nlog_group = "/x"\ndestination = "default"\n')
    assert settings.destinations == ()
    assert settings.transform.routes[0].destination == "default"


def test_each_batch_carries_its_destination_and_is_shaped_for_its_endpoint(
    tmp_path: Path,
) -> None:
    settings = settings_of(tmp_path, TWO)
    options = settings.transform
    assert options.destination_endpoints == (("security", "raw"),)
    trail = transform_lines(
        ["a line"], log_group="/aws/cloudtrail/x", log_stream="s", origin="text", options=options
    )
    assert (trail.destination, trail.endpoint) == ("security", "raw")
    assert [event.payload for event in trail.events] == [b"a line"]
    assert trail.raw_target is not None and trail.raw_target.sourcetype == "aws:cloudtrail"
    other = transform_lines(
        ["a line"], log_group="/app", log_stream="s", origin="text", options=options
    )
    assert (other.destination, other.endpoint) == ("default", "event")
    assert other.raw_target is None


def test_the_first_matching_rule_naming_a_destination_wins(tmp_path: Path) -> None:
    text = TWO.replace('log_group = "/aws/cloudtrail*"', 'log_group = "/aws/*"') + (
        '[destinations.other]\nhec_url = "https://o"\ntoken = "o"\n'
        '[[routes]]\nlog_group = "/aws/lambda/*"\nindex = "l"\n'
        '[[routes]]\nlog_group = "/aws/lambda/*"\ndestination = "other"\n'
    )
    options = settings_of(tmp_path, text).transform
    batch = transform_lines(
        ["x"], log_group="/aws/lambda/f", log_stream="s", origin="text", options=options
    )
    assert batch.destination == "security"


def test_require_hec_wants_every_destinations_token(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path, '[destinations.a]\nhec_url = "https://x"\ntoken_secret_arn = "arn:a"\n'
    )
    with pytest.raises(ConfigError) as caught:
        require_hec(settings)
    assert caught.value.key == "destinations.a.token"


class _FakeSecrets:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        from botocore.exceptions import ClientError

        if SecretId not in self.secrets:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetSecretValue")
        return {"SecretString": self.secrets[SecretId]}


@pytest.fixture
def _no_cached_tokens() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@pytest.mark.usefixtures("_no_cached_tokens")
def test_resolve_token_reads_each_destinations_secret(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path, '[destinations.a]\nhec_url = "https://x"\ntoken_secret_arn = "arn:a"\n'
    )
    fake = _FakeSecrets({"arn:a": '{"hec_token": "from-secret"}'})
    resolved = resolve_token(settings, lambda _service: fake)
    assert resolved.destinations[0].hec.token == "from-secret"
    assert require_hec(resolved) is resolved
    assert "from-secret" not in redact("token from-secret")


@pytest.mark.usefixtures("_no_cached_tokens")
def test_an_unreadable_destination_secret_names_the_destination(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path, '[destinations.a]\nhec_url = "https://x"\ntoken_secret_arn = "arn:missing"\n'
    )
    with pytest.raises(ConfigError) as caught:
        resolve_token(settings, lambda _service: _FakeSecrets({}))
    assert caught.value.key == "destinations.a.token_secret_arn"


def test_the_firehose_transform_refuses_a_named_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_single_destination((Route(log_group="/x", destination="default"),))
    with pytest.raises(ConfigError) as caught:
        require_single_destination((Route(index="a"), Route(destination="security")))
    assert caught.value.key == "routes[2].destination"
    path = tmp_path / "forwarder.toml"
    path.write_text(BASE + TWO)
    monkeypatch.setenv("FORWARDER_CONFIG", str(path))
    firehose.use_settings(None)
    try:
        with pytest.raises(ConfigError, match=r"routes\[1\]\.destination"):
            firehose.current_settings()
    finally:
        firehose.use_settings(None)


def test_risky_destination_settings_are_warned_about(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, TWO)
    found = [w for w in warnings_for(settings) if w.startswith("destinations.")]
    assert found == [
        "destinations.security.ack=false: HEC's 200 counts as delivered; events an indexer "
        "loses after that go unnoticed and are never re-sent",
        "destinations.security.verify_tls=false: HEC's certificate is not checked",
    ]
    assert "sec-token" not in " ".join(found)
