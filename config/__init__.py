"""Typed, frozen settings loaded once from environment, TOML file and CLI flags."""
