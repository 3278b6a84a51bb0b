"""Frozen, validated settings: one object built once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from transforms.options import Endpoint, TransformOptions

LogFormat = Literal["auto", "json", "console"]

#: Lambda's synchronous response limit; Firehose's transform answer must fit inside it.
LAMBDA_RESPONSE_LIMIT_BYTES = 6_291_456


#: Requests in flight (``SPLUNK_HEC_CONCURRENCY``, a destination's ``concurrency``): a
#: number, or ``"adaptive"``.
Concurrency = int | Literal["adaptive"]


@dataclass(frozen=True)
class HecSettings:
    """Where and how to reach Splunk HEC. The token never appears in repr."""

    urls: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    token_secret_arn: str | None = None
    endpoint: Endpoint = "event"
    gzip: bool = True
    verify_tls: bool = True
    ca_bundle: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    unhealthy_cooldown_s: float = 30.0
    fallback_index: str | None = None  # events refused with code 7 are re-sent here, once
    #: Requests on the wire at once (each on a channel of its own), or ``"adaptive"``.
    concurrency: Concurrency = 1


@dataclass(frozen=True)
class AckSettings:
    """Indexer acknowledgment: whether to poll, how often, and how long to wait."""

    enabled: bool = True
    timeout_s: float = 300.0
    poll_interval_s: float = 10.0
    max_pending: int = 64  # unacknowledged batches per channel before the producer waits


@dataclass(frozen=True)
class RetrySettings:
    """Retry policy as data; ``forwarder.delivery.retry`` turns it into a tenacity policy."""

    duration_s: float = 3600.0  # like Firehose's RetryOptions, 0-7200, ack waits excluded
    max_attempts: int = 0  # 0: unlimited within duration_s
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0


@dataclass(frozen=True)
class BatchSettings:
    """How events are grouped into one HEC request (bytes are counted before gzip)."""

    max_bytes: int = 1_000_000
    max_events: int = 100_000
    linger_s: float = 1.0


@dataclass(frozen=True)
class BacksplashSettings:
    """The S3 bucket that receives what could not be delivered, in Firehose's layout."""

    bucket: str | None = None
    prefix: str = ""
    spool_dir: str | None = None


@dataclass(frozen=True)
class LogSettings:
    """structlog output: level and renderer (``auto``: console on a TTY, JSON otherwise)."""

    level: str = "INFO"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class FirehoseSettings:
    """The Firehose transform's own limits."""

    response_limit_bytes: int = LAMBDA_RESPONSE_LIMIT_BYTES


@dataclass(frozen=True)
class DestinationSettings:
    """One ``[destinations.NAME]`` table: the top-level HEC and ack settings with the
    table's keys replaced (``config.destinations``); the token never appears in repr."""

    name: str
    hec: HecSettings
    acks: AckSettings
    backsplash_prefix: str | None = None  # None: BACKSPLASH_PREFIX


@dataclass(frozen=True)
class Settings:
    """Everything the forwarder needs, validated; build with ``config.loader.load_settings``."""

    hec: HecSettings = field(default_factory=HecSettings)
    acks: AckSettings = field(default_factory=AckSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    batching: BatchSettings = field(default_factory=BatchSettings)
    backsplash: BacksplashSettings = field(default_factory=BacksplashSettings)
    transform: TransformOptions = field(default_factory=TransformOptions)
    firehose: FirehoseSettings = field(default_factory=FirehoseSettings)
    log: LogSettings = field(default_factory=LogSettings)
    #: The named destinations; the top-level HEC settings are ``default`` and not listed.
    destinations: tuple[DestinationSettings, ...] = ()

    @property
    def destination_names(self) -> tuple[str, ...]:
        """``default`` and every named destination, in the file's order."""
        return ("default", *(dest.name for dest in self.destinations))

    def for_destination(self, name: str) -> Settings:
        """The full settings of one destination: these, with its HEC and ack settings and
        backsplash prefix; ``default`` gives these settings unchanged.

        Raises:
            KeyError: no destination has that name.
        """
        if name == "default":
            return self
        for dest in self.destinations:
            if dest.name == name:
                backsplash = self.backsplash
                if dest.backsplash_prefix is not None:
                    backsplash = replace(backsplash, prefix=dest.backsplash_prefix)
                return replace(
                    self, hec=dest.hec, acks=dest.acks, backsplash=backsplash, destinations=()
                )
        raise KeyError(name)
