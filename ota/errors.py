"""Errors raised by ota/: the shared tree from inference.errors, plus the one ota adds.

EdgeAgentError
├── BundleError / VerificationError   a bad bundle, archive, name or pointer target
├── TransientError                    full disk, failing fsync/rename: retry later
├── ConfigError                       the store root cannot be created
└── FatalError
    └── IllegalTransition             an event the update table does not allow (a caller bug)
"""

from __future__ import annotations

from inference.errors import (
    BundleError,
    ConfigError,
    EdgeAgentError,
    FatalError,
    SourceError,
    TransientError,
    ValidationError,
    VerificationError,
)


class IllegalTransition(FatalError):
    """An event that the update state machine's table does not allow in the current state."""


__all__ = [
    "BundleError",
    "ConfigError",
    "EdgeAgentError",
    "FatalError",
    "IllegalTransition",
    "SourceError",
    "TransientError",
    "ValidationError",
    "VerificationError",
]
