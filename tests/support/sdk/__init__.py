"""Dria's Python SDK for the tests: its own virtualenv (its pins conflict with ours) and the scripts run in it."""
