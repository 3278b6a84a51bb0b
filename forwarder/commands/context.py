"""What every subcommand gets (``run(args, ctx)``), and the flags they share."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from config.daemon import DaemonSettings, load_daemon_settings
from config.drain import DrainSettings, load_drain_settings
from config.loader import flag_overrides, load_settings, read_document, warnings_for
from config.logs import configure_logging, register_secret
from config.settings import Settings

#: What each command's start-up warnings (``settings_warning``) look at, by command name
#: (``config.loader.warnings_for``): ``transform`` sends nothing, so neither acknowledgment
#: nor a backsplash matters to it; ``replay`` puts what fails again under replay-failed/ of
#: the replayed bucket, never into BACKSPLASH_BUCKET; the daemon's spool alone is a safety net.
#: Any other command gets every warning.
SAFETY_NET: Mapping[str | None, Mapping[str, bool]] = {
    "transform": {"delivers": False, "backsplash": False},
    "replay": {"backsplash": False},
    "daemon": {"spool": True},
}


class CommandContext:
    """What every subcommand gets: the environment, lazily loaded settings, output streams.

    The settings file is read at most once per command: :meth:`settings` and
    :meth:`daemon_settings` parse the same document.
    """

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> None:
        self._args = args
        self.environ = environ
        self.out = out
        self._overrides = flag_overrides(vars(args))
        self._document: dict[str, Any] | None = None
        self._settings: Settings | None = None

    def _config_document(self) -> dict[str, Any]:
        if self._document is None:
            config_path = getattr(self._args, "config", None)
            self._document = read_document(
                self.environ, Path(config_path) if config_path else None, self._overrides
            )
        return self._document

    def settings(self) -> Settings:
        """Settings from flags > environment > TOML; loaded once; logging configured here."""
        if self._settings is None:
            config_path = getattr(self._args, "config", None)
            settings = load_settings(
                self.environ,
                Path(config_path) if config_path else None,
                self._overrides,
                document=self._config_document(),
            )
            register_secret(settings.hec.token)
            configure_logging(settings.log)
            log = structlog.get_logger()
            command = getattr(self._args, "command", None)
            for warning in warnings_for(settings, **SAFETY_NET.get(command, {})):
                log.warning("settings_warning", problem=warning)
            self._settings = settings
        return self._settings

    def daemon_settings(self) -> DaemonSettings:
        """The ``[daemon]`` and ``[source]`` tables (with their ``FORWARDER_*`` overrides)
        of the same settings file :meth:`settings` reads."""
        return load_daemon_settings(self._config_document(), self.environ)

    def drain_settings(self, overrides: Mapping[str, object] | None = None) -> DrainSettings:
        """The ``[drain]`` table (``DRAIN_*`` and then ``overrides`` win) of the same file."""
        return load_drain_settings(self._config_document(), self.environ, overrides)


def add_common_arguments(parser: argparse.ArgumentParser, *, hec: bool = True) -> None:
    """The flags every command that reads settings shares; ``hec`` adds the HEC URL and token
    (every command that talks to HEC itself)."""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $FORWARDER_CONFIG)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log lines at this level and above; DEBUG also prints the traceback of an error "
        "(any case; default: $LOG_LEVEL, else INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="auto: readable on a terminal, JSON lines otherwise (default: $LOG_FORMAT, else auto)",
    )
    if hec:
        parser.add_argument(
            "--hec-url", help="HEC URL(s), comma-separated (default: $SPLUNK_HEC_URL)"
        )
        parser.add_argument(
            "--token",
            help="HEC token (default: $SPLUNK_HEC_TOKEN, which is better: other users cannot "
            "see it in ps)",
        )


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The input of ``forward`` and ``transform`` (one reader, so one set of flags)."""
    parser.add_argument("file", metavar="FILE", help="payload file, or - for stdin")
    parser.add_argument(
        "--log-group",
        help="route text and flow-log files as if from this log group (e.g. /aws/vpc/flowlogs)",
    )
    parser.add_argument(
        "--log-stream",
        help="log stream name used for routing and source (default: the file's path)",
    )
