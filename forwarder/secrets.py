"""The HEC token from AWS Secrets Manager, fetched once per process (Lambda container).

``SPLUNK_HEC_TOKEN_SECRET_ARN`` names a secret whose ``SecretString`` is the token itself or
a JSON object ``{"hec_token": "..."}``. The value is cached per ARN for the life of the
process and registered with the log redactor, so it never reaches a log line.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Final

from config.loader import ConfigError, require_hec, with_token
from config.logs import register_secret
from config.settings import Settings
from forwarder.aws import ClientFactory

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
            import boto3  # noqa: PLC0415 - only when a secret is configured
            from botocore.config import Config  # noqa: PLC0415

            client = boto3.client("secretsmanager", config=Config(retries={"mode": "standard"}))
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


def clear_cache() -> None:
    """Forget cached tokens (tests; a rotated secret in a long-running process)."""
    with _lock:
        _cache.clear()


def resolve_token(settings: Settings, client_factory: ClientFactory | None = None) -> Settings:
    """``settings`` ready to deliver: the token fetched from Secrets Manager when only
    ``SPLUNK_HEC_TOKEN_SECRET_ARN`` is set, then a URL and a token required.

    Args:
        settings: loaded settings.
        client_factory: builds the Secrets Manager client (None: :func:`get_hec_token`'s).

    Raises:
        ConfigError: the secret cannot be read, or no URL or token is set.
    """
    if not settings.hec.token and settings.hec.token_secret_arn:
        client = client_factory("secretsmanager") if client_factory is not None else None
        settings = with_token(settings, get_hec_token(settings.hec.token_secret_arn, client))
    return require_hec(settings)
