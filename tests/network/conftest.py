"""Fixtures of the network tests (the helpers live in network_helpers.py)."""

from network_helpers import no_thread_leaks, pki

__all__ = ["no_thread_leaks", "pki"]
