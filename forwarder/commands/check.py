"""``forwarder check``: the settings are valid; each HEC URL is healthy and takes the token."""

from __future__ import annotations

import argparse
from typing import IO

import requests

from config.loader import require_hec
from config.settings import Settings
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.errors import DeliveryError
from forwarder.hec.client import HecClient
from forwarder.status import ExitStatus, RunOutcome, status_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder check``: the shared ones only."""
    add_common_arguments(parser)


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder check``: probe every HEC URL and say what is wrong in plain words."""
    return check(ctx.settings(), ctx.out)


def check(settings: Settings, out: IO[str]) -> ExitStatus:
    """Probe each HEC URL's health and token, writing one line per finding.

    Returns 0 when all is well, 4 when a URL refuses the token, 1 when a URL is unhealthy or
    its token cannot be checked (a refused token wins).
    """
    require_hec(settings)
    out.write("settings: valid\n")
    refused = failed = False
    with requests.Session() as session:
        for url in settings.hec.urls:
            client = HecClient(session, settings.hec, url)
            healthy, code, text = client.health()
            out.write(f"{url}: health {'OK' if healthy else 'NOT OK'} (code {code}: {text})\n")
            try:
                outcome = client.probe_token()
            except DeliveryError as exc:
                out.write(f"{url}: cannot check the token: {exc}\n")
                failed = True
                continue
            if outcome.action == "ok":
                out.write(f"{url}: token accepted\n")
            else:
                out.write(f"{url}: token refused: {outcome.reason}\n")
                refused = True
            if not healthy:
                failed = True
    return status_for(RunOutcome(hec_fatal=refused, error=failed))
