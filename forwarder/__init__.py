"""Delivery side of firehose-splunk-forwarder: HEC client, acks, backsplash, daemon, CLI."""

__version__ = "0.1.0"
