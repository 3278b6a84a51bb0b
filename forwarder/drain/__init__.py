"""The scheduled drain Lambda (``forwarder.drain.handler``) and the drain's package.

An EventBridge schedule invokes the handler; it runs drain cycles
(:class:`~forwarder.drain.drainer.Drainer`) until the bucket is drained, HEC's gate is shut
or a cycle meets trouble, or its deadline comes near: the remaining time
(``context.get_remaining_time_in_millis``) minus :func:`margin_s`, kept for the backlog
listing and the answer. The cycle in flight stops ``settle_s`` before that deadline and its
deliverers give up at it (what is unsent goes back to the pool), so the invocation ends
cleanly and the next schedule resumes where the state says.

Settings come from the environment, loaded once per container as the push Lambda does
(``config.loader.load_settings``, the token from Secrets Manager when
``SPLUNK_HEC_TOKEN_SECRET_ARN`` is set); the drain's own from ``DRAIN_<KEY>``
(:mod:`config.drain`): ``DRAIN_STATE`` (the template sets ``dynamodb://TABLE``),
``DRAIN_SOURCE`` (default: ``s3://BACKSPLASH_BUCKET/BACKSPLASH_PREFIX``),
``DRAIN_MAX_EVENTS_PER_S``, ``DRAIN_MAX_ATTEMPTS``. Without ``DRAIN_STATE`` the state is a
SQLite file under ``/tmp`` (one container's; the DynamoDB table is the shared one).

At the end it logs one CloudWatch Embedded Metric Format line
(:func:`~forwarder.drain.backlog.emf_document`: backlog objects, bytes and oldest age, what
needs a person, what this invocation delivered and gave up on, and the failure queue's depth
when one is configured) and answers the same figures.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from config.drain import LAMBDA_STATE_HOME, DrainSettings, load_drain_settings, state_option
from config.loader import load_settings, require_hec, warnings_for
from config.logs import configure_logging, register_secret
from config.settings import Settings
from forwarder import aws
from forwarder.drain.backlog import emf_document, measure_backlog
from forwarder.drain.drainer import Drainer
from forwarder.secrets import resolve_token

#: Kept free at the end of an invocation for the backlog listing and the answer: a tenth of
#: the remaining time, between these bounds.
MARGIN_MIN_S: Final = 2.0
MARGIN_MAX_S: Final = 30.0
MARGIN_FRACTION: Final = 0.1

_log = structlog.get_logger("forwarder.drain")


def margin_s(remaining_s: float) -> float:
    """The time kept free at the end of an invocation with ``remaining_s`` left."""
    return min(MARGIN_MAX_S, max(remaining_s * MARGIN_FRACTION, MARGIN_MIN_S))


@dataclass(frozen=True)
class _Container:
    settings: Settings
    drain: DrainSettings
    client_factory: aws.ClientFactory
    state: str
    failure_queue: str | None = None


_container: _Container | None = None
_lock = threading.Lock()


def configure(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    client_factory: aws.ClientFactory = aws.client,
    failure_queue: str | None = None,
) -> None:
    """Build the container's settings once (the handler calls it on first use; tests pass
    ready settings and an environment). ``failure_queue``: the push Lambda's on-failure SQS
    queue URL, whose depth the EMF line carries (None: ``DRAIN_FAILURE_QUEUE``, or not
    measured)."""
    global _container  # noqa: PLW0603 - one per Lambda container, by design
    env = os.environ if environ is None else environ
    if settings is None:
        settings = load_settings(env)
    settings = require_hec(resolve_token(settings, client_factory))
    register_secret(settings.hec.token)
    configure_logging(settings.log)
    for warning in warnings_for(settings):
        _log.warning("settings_warning", problem=warning)
    drain = load_drain_settings(None, env)
    state = state_option(drain.state, env, scratch=LAMBDA_STATE_HOME)
    _container = _Container(
        settings, drain, client_factory, state, failure_queue or drain.failure_queue
    )


def reset() -> None:
    """Forget the container's settings (tests)."""
    global _container  # noqa: PLW0603
    _container = None


def _get_container() -> _Container:
    with _lock:
        if _container is None:
            configure()
        assert _container is not None
        return _container


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Drain until the deadline (or nothing is left), log the backlog as EMF, answer it.

    Args:
        event: the EventBridge scheduled event (not read).
        context: the Lambda context (``get_remaining_time_in_millis``).

    Returns:
        ``{"outcome", "reason", "counters", "backlog"}``.
    """
    del event
    container = _get_container()
    clock = time.monotonic
    started = clock()
    getter = getattr(context, "get_remaining_time_in_millis", None)
    deadline: float | None = None
    if getter is not None:
        remaining = float(getter()) / 1000.0
        deadline = started + max(remaining - margin_s(remaining), 0.0)
    s3 = container.client_factory("s3")
    drainer = Drainer(
        container.settings,
        container.drain,
        s3_client=s3,
        state=container.state,
        clock=clock,
    )
    result = drainer.run(deadline=deadline)
    counters = drainer.counters.snapshot()
    queue = container.failure_queue
    backlog = measure_backlog(
        s3,
        drainer.source,
        failure_queue=queue,
        sqs=container.client_factory("sqs") if queue is not None else None,
    )
    document = emf_document(
        backlog,
        events_delivered=counters["events_delivered"],
        events_abandoned=counters["events_abandoned"],
    )
    # EMF wants the JSON object alone on its line: printed, not through the log renderer.
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return {
        "outcome": result.outcome,
        "reason": result.reason,
        "counters": counters,
        "backlog": backlog.to_dict(),
    }
