"""The edge-agent exception tree, shared by every package.

    EdgeAgentError            base: every error the agent raises on purpose
    ├── ConfigError           a config file, flag or key is wrong (names the key and the fix)
    ├── BundleError           a model file or bundle is missing, unreadable or inconsistent
    │   └── VerificationError sha256, size or signature does not match
    ├── ValidationError       a candidate model failed the validation gate (golden, NaN, shape, latency)
    ├── SourceError           a frame source cannot be opened or died
    ├── TransientError        worth retrying later (network, busy device, full disk)
    └── FatalError            cannot go on; report and stop this job

Third-party errors (onnxruntime, LiteRT, OpenCV, sqlite3, httpx, paho) are translated into
these where they are called, so callers only ever catch this tree.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base class; ``str(err)`` names the problem and what to do about it."""


class ConfigError(EdgeAgentError):
    pass


class BundleError(EdgeAgentError):
    pass


class VerificationError(BundleError):
    pass


class ValidationError(EdgeAgentError):
    pass


class SourceError(EdgeAgentError):
    pass


class TransientError(EdgeAgentError):
    pass


class FatalError(EdgeAgentError):
    pass
