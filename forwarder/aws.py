"""The one boto3 client factory: standard retry mode everywhere, boto3 imported only when used.

boto3 takes a large share of a cold start, so commands and handlers that never talk to AWS
(``forwarder --help``, ``transform``, a push invocation without a backsplash bucket) must not
pay for it. Every module that needs a client calls :func:`client` (or takes a factory with the
same signature, so tests can hand in a client bound to a moto server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The signature of :func:`client`, for code that takes an injectable factory.
ClientFactory = Callable[[str], Any]


def client(service: str, **kwargs: Any) -> Any:
    """A boto3 client for ``service`` with botocore's ``standard`` retry mode.

    Region, credentials and endpoint come from the usual AWS environment (``AWS_REGION``,
    ``AWS_ENDPOINT_URL_<SERVICE>`` and so on); ``kwargs`` go to ``boto3.client`` unchanged.
    """
    import boto3  # noqa: PLC0415 - optional heavy dependency, loaded on first use
    from botocore.config import Config  # noqa: PLC0415

    kwargs.setdefault("config", Config(retries={"mode": "standard"}))
    return boto3.client(service, **kwargs)  # type: ignore[call-overload]
