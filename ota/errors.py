"""Errors raised by ota/: the shared tree from inference.errors, plus the one ota adds.

EdgeAgentError
├── BundleError / VerificationError   a bad bundle, archive, name or pointer target
│   └── Rejected                      an update job or manifest refused by a rule (``reason``
│                                     is a stable code: unsigned, unknown_key, bad_signature, ...)
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

#: The stable reason codes of a ``Rejected`` (DESIGN §6; published in REJECTED statuses).
REJECT_REASONS = (
    "malformed",  # not JSON, wrong types, unknown fields, bad values
    "too_large",  # over the size limit for its kind
    "unsigned",  # no signature where one is required
    "unknown_key",  # signed by a key that is not in trust/
    "bad_signature",  # the signature does not match the content
    "replay",  # a job id or nonce seen before
    "expired",  # past expires_at (judged against max(clock, last trusted time))
    "not_for_this_device",  # the target names other devices or another group
    "downgrade",  # a lower release counter (or version) than the one installed
    "incompatible",  # the manifest's compat excludes this agent or its runtimes
    "unsupported_action",  # an action this agent does not carry out
    "pinned",  # the serving version is pinned on the device (`edge-agent models unpin`)
    "not_applicable",  # nothing to do: already serving that version, no previous version to roll back to
    "invalid_policy",  # a sampling policy (or capture) the device refuses; the message names the key
)


class Rejected(VerificationError):
    """A job, message or manifest refused by a rule before anything changed.

    ``reason`` is one of ``REJECT_REASONS``; ``str(err)`` says what was wrong and what to do."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(message)
        self.reason = reason


class IllegalTransition(FatalError):
    """An event that the update state machine's table does not allow in the current state."""


__all__ = [
    "REJECT_REASONS",
    "BundleError",
    "ConfigError",
    "EdgeAgentError",
    "FatalError",
    "IllegalTransition",
    "Rejected",
    "SourceError",
    "TransientError",
    "ValidationError",
    "VerificationError",
]
