"""The HEC token from AWS Secrets Manager, fetched once per process (Lambda container).

:func:`resolve_token` is the one place a command or handler turns settings that name a
secret into settings that hold the token.

``SPLUNK_HEC_TOKEN_SECRET_ARN`` names a secret whose ``SecretString`` is the token itself or
a JSON object ``{"hec_token": "..."}``. The value is cached per ARN for the life of the
process and registered with the log redactor, so it never reaches a log line.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import Any, Final

from config.errors import ConfigError
from config.loader import with_token
from config.logs import register_secret
from config.settings import DestinationSettings, Settings
from forwarder import aws

TOKEN_KEY: Final = "hec_token"
_cache: dict[str, str] = {}
_lock = threading.Lock()


def token_from_secret_string(arn: str, secret: str) -> str:
    """The token a ``SecretString`` holds (plain, or JSON with ``hec_token``).

    Raises:
        ConfigError: the secret is empty or JSON without a usable ``hec_token``.
    """
    text = secret.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            raise ConfigError(
                "SPLUNK_HEC_TOKEN_SECRET_ARN", f"secret {arn} is neither a token nor valid JSON"
            ) from None
        value = document.get(TOKEN_KEY) if isinstance(document, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                "SPLUNK_HEC_TOKEN_SECRET_ARN",
                f'secret {arn} is JSON without a "{TOKEN_KEY}" string',
            )
        text = value.strip()
    if not text:
        raise ConfigError("SPLUNK_HEC_TOKEN_SECRET_ARN", f"secret {arn} is empty")
    return text


def get_hec_token(arn: str, client: Any = None) -> str:
    """The token stored in secret ``arn``, fetched on first use and cached.

    Args:
        arn: the secret's ARN (or name).
        client: a boto3 Secrets Manager client; one is made when None.

    Raises:
        ConfigError: the secret cannot be read or holds no token.
    """
    with _lock:
        cached = _cache.get(arn)
        if cached is not None:
            return cached
        if client is None:
            client = aws.client("secretsmanager")
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            answer = client.get_secret_value(SecretId=arn)
        except (BotoCoreError, ClientError) as exc:
            raise ConfigError(
                "SPLUNK_HEC_TOKEN_SECRET_ARN", f"cannot read secret {arn}: {type(exc).__name__}"
            ) from None
        secret = answer.get("SecretString")
        if not isinstance(secret, str):
            raise ConfigError("SPLUNK_HEC_TOKEN_SECRET_ARN", f"secret {arn} has no SecretString")
        token = token_from_secret_string(arn, secret)
        register_secret(token)
        _cache[arn] = token
        return token


def resolve_token(settings: Settings, client_factory: aws.ClientFactory = aws.client) -> Settings:
    """``settings`` with the token filled in from ``SPLUNK_HEC_TOKEN_SECRET_ARN`` when they
    name a secret and hold no token (a token given directly wins); otherwise unchanged. Each
    ``[destinations.NAME]`` with a ``token_secret_arn`` gets its token likewise.

    Args:
        settings: loaded settings.
        client_factory: makes the Secrets Manager client, only when a secret must be read
            (the push Lambda passes its own; tests one bound to a local server).

    Raises:
        ConfigError: the secret cannot be read or holds no token.
    """
    arn = settings.hec.token_secret_arn
    if not settings.hec.token and arn:
        settings = with_token(settings, _token(arn, client_factory))
    if any(not dest.hec.token for dest in settings.destinations):
        settings = replace(
            settings,
            destinations=tuple(_resolved(dest, client_factory) for dest in settings.destinations),
        )
    return settings


def _token(arn: str, client_factory: aws.ClientFactory) -> str:
    with _lock:
        cached = _cache.get(arn)
    client = None if cached is not None else client_factory("secretsmanager")
    return get_hec_token(arn, client)


def _resolved(dest: DestinationSettings, client_factory: aws.ClientFactory) -> DestinationSettings:
    """A ``[destinations.NAME]`` with its ``token_secret_arn`` read (errors name its key)."""
    arn = dest.hec.token_secret_arn
    if dest.hec.token or not arn:
        return dest
    try:
        token = _token(arn, client_factory)
    except ConfigError as exc:
        raise ConfigError(f"destinations.{dest.name}.token_secret_arn", exc.problem) from None
    return replace(dest, hec=replace(dest.hec, token=token))


def clear_cache() -> None:
    """Forget cached tokens (tests; a rotated secret in a long-running process)."""
    with _lock:
        _cache.clear()
