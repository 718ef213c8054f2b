"""The base of every error this library raises about its caller's input.

Library code raises its own subclass (``ConfigError``, ``BackendError``, ``DetectError`` ...);
it never raises the command line's ``UserError``. The CLIs map :class:`YoloError` (and the
file-system errors) to exit code 2 through the one table in :mod:`yolo.cli.common`. A
``ValueError`` subclass, so callers that caught ``ValueError`` keep working.
"""
from __future__ import annotations


class YoloError(ValueError):
    """Bad input (a file, a setting, an argument) described in one line; not a bug in this library."""
