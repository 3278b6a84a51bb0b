"""The one configuration error (stdlib only, so the command line can map it without loading
the settings machinery)."""

from __future__ import annotations


class ConfigError(Exception):
    """A missing or invalid setting; the message names the key and what is allowed."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
