"""``forwarder check``: the settings are valid; each HEC URL is reachable, healthy, takes the
token, and has indexer acknowledgment on or off (and what that means)."""

from __future__ import annotations

import argparse
from typing import IO, Final, Literal

import requests

from config.loader import require_hec
from config.settings import Settings
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.errors import AckUnavailableError, DeliveryError
from forwarder.hec.client import HecClient
from forwarder.hec.diagnosis import explain_failure
from forwarder.status import ExitStatus, RunOutcome, status_for
from transforms.options import DEFAULT_DESTINATION

#: What acknowledgment on or off means for delivery, as ``check`` prints it.
ACKS_ON: Final = (
    "indexer acknowledgment on: a batch counts as delivered only once Splunk confirms "
    "it was indexed; unconfirmed batches are re-sent"
)
ACKS_OFF: Final = (
    "indexer acknowledgment OFF for this token: delivery cannot be confirmed; events count "
    "as delivered on HEC's 200 answer, and what Splunk loses after that is not re-sent "
    "(enable indexer acknowledgment on the token in Splunk)"
)
ACKS_NOT_USED: Final = (
    "indexer acknowledgment on for this token, but SPLUNK_HEC_ACK=false: the forwarder does "
    "not wait for it, so events count as delivered on HEC's 200 answer"
)

AckState = Literal["on", "off", "unknown"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder check``: the shared ones only."""
    add_common_arguments(parser)


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder check``: probe every HEC URL and say what is wrong in plain words."""
    return check(ctx.settings(), ctx.out)


def _ack_state(client: HecClient) -> tuple[AckState, str]:
    """Ask the ack endpoint about an ackId never handed out on our fresh channel: a token with
    acknowledgment on answers ``{"acks": {"0": false}}``, one without answers code 14. Nothing
    is indexed."""
    try:
        client.query_acks([0])
    except AckUnavailableError:
        return "off", ""
    except DeliveryError as exc:
        return "unknown", exc.message
    return "on", ""


def _ack_line(settings: Settings, state: AckState, detail: str) -> str:
    if state == "off":
        return ACKS_OFF
    if state == "unknown":
        return f"indexer acknowledgment: cannot tell ({detail})"
    return ACKS_ON if settings.acks.enabled else ACKS_NOT_USED


def check(settings: Settings, out: IO[str]) -> ExitStatus:
    """Probe each HEC URL: reachable, healthy, token accepted, acknowledgment on or off.

    One line per finding, prefixed with the URL. A URL that cannot be reached gets one line
    saying why in plain words (connection refused, name not found, TLS certificate not
    trusted, timed out) and no further probes. Each ``[destinations.NAME]`` is checked after
    the top-level HEC, under a ``destination NAME:`` line, with its own token.

    Returns:
        0 when all is well (acknowledgment off is reported, not an error), 4 when a URL
        refuses the token, 1 when a URL is unreachable or unhealthy or its token cannot be
        checked (a refused token wins).
    """
    require_hec(settings)
    out.write("settings: valid\n")
    refused = failed = False
    with requests.Session() as session:
        for name in settings.destination_names:
            if name != DEFAULT_DESTINATION:
                out.write(f"destination {name}:\n")
            one_refused, one_failed = _check_urls(settings.for_destination(name), session, out)
            refused, failed = refused or one_refused, failed or one_failed
    return status_for(RunOutcome(hec_fatal=refused, error=failed))


def _check_urls(settings: Settings, session: requests.Session, out: IO[str]) -> tuple[bool, bool]:
    """Probe one destination's URLs; (a token was refused, something else failed)."""
    refused = failed = False
    for url in settings.hec.urls:
        client = HecClient(session, settings.hec, url)
        try:
            outcome = client.probe_token()
        except DeliveryError as exc:
            reason = explain_failure(exc, url, ca_bundle=settings.hec.ca_bundle)
            out.write(f"{url}: NOT OK: {reason}\n")
            failed = True
            continue
        healthy, _code, text = client.health()
        out.write(f"{url}: health {'OK' if healthy else 'NOT OK'} ({text})\n")
        if not healthy:
            failed = True
        if outcome.action == "fatal":
            out.write(f"{url}: token refused: {outcome.reason}\n")
            refused = True
            continue
        if outcome.action != "ok":
            out.write(f"{url}: cannot check the token: {outcome.reason}\n")
            failed = True
            continue
        out.write(f"{url}: token accepted\n")
        out.write(f"{url}: {_ack_line(settings, *_ack_state(client))}\n")
    return refused, failed
