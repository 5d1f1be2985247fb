"""Leaves: plain config dataclasses, the run directory's files, content hashes (stdlib + numpy)."""
