"""``RemoteBundleFetcher``: the FETCHING step of a remote deploy job (DESIGN §3, §5, §6).

A signed job names ``manifest_url`` and ``manifest_sha256``; the bundle's other files lie
beside the manifest (``manifest.sig``, the model ``file`` and its ORT-format companion if the
manifest has one, golden pairs, a labels file).
Into ``staging/<job>/``, in this order, nothing trusted before it is verified:

1. ``manifest.json`` (at most 1 MiB) must hash to the job's ``manifest_sha256``;
2. ``manifest.sig`` must verify against a key in ``trust/`` (when signatures are required);
3. the manifest is parsed strictly; its ``compat`` must admit this agent and a runtime it
   has; its ``release_counter`` must be the one the job announced;
4. the model file streams in (resumable, at most the manifest's ``size``, sha256 checked);
5. golden files and a labels file (each capped) follow.

Rejections (``Rejected``) name a reason code; download failures are ``TransientError``
(retries exhausted) or ``BundleError`` (a 4xx). Staged files survive a restart, so a
resumed job continues the model download from the bytes on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from inference.bundle import MANIFEST, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from inference.errors import BundleError, VerificationError
from inference.fsio import atomic_write_bytes
from ota.downloader import Downloader, DownloadPolicy
from ota.errors import Rejected
from ota.trust import TrustStore, check_compat, verify_manifest_bytes
from ota.update_job import UpdateJob

log = logging.getLogger(__name__)

SIGNATURE = "manifest.sig"
MAX_SIG_BYTES = 4096
MAX_AUX_BYTES = 64 << 20  # a golden array or a labels file


@dataclass
class RemoteBundleFetcher:
    """Called by the ``ModelManager`` as ``fetcher(job, dest, wait) -> bundle folder``."""

    trust: TrustStore | None
    require_signed: bool
    agent_version: str
    runtimes: Collection[str]
    policy: DownloadPolicy = field(default_factory=DownloadPolicy)
    transport: httpx.BaseTransport | None = None
    progress: Callable[[str, int, int | None], None] | None = None

    def __call__(self, job: UpdateJob, dest: Path, wait: Callable[[float], bool]) -> Path:
        assert job.source is not None and job.manifest_sha256 is not None
        dl = Downloader(self.policy, transport=self.transport, wait=wait, progress=self.progress)
        dest.mkdir(parents=True, exist_ok=True)
        if not any(dest.iterdir()):  # a fresh job (not a resumed one): the fleet-wide jitter
            dl.start_delay()
        url = job.source
        raw = dl.fetch_bytes(
            url, max_bytes=MAX_MANIFEST_BYTES, sha256=job.manifest_sha256, what="the job's manifest_url"
        )
        sig = self._signature(dl, urljoin(url, SIGNATURE))
        if self.require_signed or sig is not None:
            if self.trust is None:
                raise Rejected("unknown_key", "the bundle is signed but this device has no keys in trust/")
            key = verify_manifest_bytes(raw, sig, self.trust)
            log.info("job %s: manifest signed by key %s", job.job_id, key)
        try:
            manifest = parse_manifest(raw, url)
        except BundleError as err:
            raise Rejected("malformed", str(err)) from None
        check_compat(manifest.compat, agent_version=self.agent_version, runtimes=self.runtimes)
        if job.release_counter is not None and manifest.release_counter != job.release_counter:
            raise Rejected(
                "malformed",
                f"the manifest's release_counter {manifest.release_counter} is not the job's "
                f"{job.release_counter}: the job and the bundle do not belong together",
            )
        dl.fetch(
            _beside(url, manifest.file),
            dest / manifest.file,
            max_bytes=manifest.size,
            expected_size=manifest.size,
            sha256=manifest.sha256,
            what="the model file",
        )
        if manifest.ort is not None:  # the ORT-format companion (inference/ort_format.py)
            ort = manifest.ort
            dl.fetch(
                _beside(url, ort["file"]),
                dest / ort["file"],
                max_bytes=ort["size"],
                expected_size=ort["size"],
                sha256=ort["sha256"],
                what="the ORT-format companion",
            )
        for rel in _aux_files(manifest):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            dl.fetch(_beside(url, rel), target, max_bytes=MAX_AUX_BYTES, what=f"the bundle file {rel}")
        atomic_write_bytes(dest / MANIFEST, raw)
        if sig is not None:
            atomic_write_bytes(dest / SIGNATURE, sig)
        return dest

    def _signature(self, dl: Downloader, url: str) -> bytes | None:
        try:
            return dl.fetch_bytes(url, max_bytes=MAX_SIG_BYTES, what="the manifest signature")
        except VerificationError:  # oversize, or the server lies: not "unsigned"
            raise
        except BundleError as err:  # a 4xx: an unsigned bundle (refused when signatures are required)
            log.info("no manifest signature at %s: %s", url, err)
            return None


def _beside(manifest_url: str, rel: str) -> str:
    """The URL of a bundle file: beside the manifest, on the same server, never elsewhere."""
    if any(c in rel for c in ":?#%\\") or rel.startswith("/") or "//" in rel:
        raise Rejected("malformed", f"bundle file name {rel!r} is not a plain relative path")
    out = urljoin(manifest_url, rel)
    base, here = urlsplit(manifest_url), urlsplit(out)
    if (here.scheme, here.netloc) != (base.scheme, base.netloc):  # pragma: no cover - guarded above
        raise Rejected("malformed", f"bundle file {rel!r} resolves to another server ({out})")
    return out


def _aux_files(manifest: Manifest) -> list[str]:
    files: list[str] = []
    for pair in manifest.golden:
        files.append(pair["input"])
        files.extend(pair["outputs"])
    if isinstance(manifest.labels, str):
        files.append(manifest.labels)
    return list(dict.fromkeys(files))


__all__ = ["RemoteBundleFetcher"]
