"""What every subcommand gets (``run(args, ctx)``), and the flags they share."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import structlog

from config.loader import load_settings, warnings_for
from config.logs import configure_logging, register_secret
from config.settings import Settings


class CommandContext:
    """What every subcommand gets: the environment, lazily loaded settings, output streams."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> None:
        self._args = args
        self.environ = environ
        self.out = out
        self._settings: Settings | None = None

    def settings(self, **extra_overrides: str) -> Settings:
        """Settings from flags > environment > TOML; loaded once; logging configured here."""
        if self._settings is None:
            overrides = {k: v for k, v in flag_overrides(self._args).items() if v is not None}
            overrides.update(extra_overrides)
            config_path = getattr(self._args, "config", None)
            settings = load_settings(
                self.environ, Path(config_path) if config_path else None, overrides
            )
            register_secret(settings.hec.token)
            configure_logging(settings.log)
            log = structlog.get_logger()
            for warning in warnings_for(settings):
                log.warning("settings_warning", problem=warning)
            self._settings = settings
        return self._settings


def flag_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "SPLUNK_HEC_URL": getattr(args, "hec_url", None),
        "SPLUNK_HEC_TOKEN": getattr(args, "token", None),
        "LOG_LEVEL": getattr(args, "log_level", None),
        "LOG_FORMAT": getattr(args, "log_format", None),
    }


def add_common_arguments(parser: argparse.ArgumentParser, *, hec: bool = True) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $FORWARDER_CONFIG)"
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    if hec:
        parser.add_argument("--hec-url", help="HEC URL(s), comma-separated ($SPLUNK_HEC_URL)")
        parser.add_argument(
            "--token",
            help="HEC token; prefer $SPLUNK_HEC_TOKEN, which other users cannot see in ps",
        )
