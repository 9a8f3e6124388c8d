"""Who may update this device: ed25519 keys, signed jobs and manifests, and the job rules (DESIGN §6).

    fleet side                              device side (<state>/trust/*.pub)
    generate_keypair -> fleet.key/.pub      TrustStore(trust_dir): the trusted keys, by key_id
    sign_object(job, key)                   TrustStore.verify_object(job) -> key_id
    sign_bundle(bundle_dir, key)            verify_bundle_signature(bundle_dir, trust) -> key_id
                                            check_job_rules(...), check_compat(...)

A signed object carries ``key_id`` (first 16 hex digits of sha256 of the raw public key) and
``signature`` (standard base64 of the 64-byte ed25519 signature over ``canonical_json`` of the
object without ``signature``). ``manifest.sig`` is ``{"key_id", "signature"}`` over the exact
bytes of ``manifest.json``. Every refusal is a ``Rejected`` with a stable ``reason``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from inference.bundle import MANIFEST, MAX_MANIFEST_BYTES, open_bundle, parse_manifest
from inference.fsio import DEFAULT_FS, FsOps, atomic_write_bytes
from ota.errors import BundleError, ConfigError, Rejected

log = logging.getLogger(__name__)

TRUST_DIRNAME = "trust"  # <state>/trust/ holds the trusted *.pub keys
SIG_FILE = "manifest.sig"
MAX_KEY_FILE_BYTES = 16 * 1024
MAX_SIG_BYTES = 4 * 1024
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SIGNATURE_BYTES = 64


def trust_dir(state_dir: Path) -> Path:
    """The folder of trusted public keys under the agent's state folder."""
    return Path(state_dir) / TRUST_DIRNAME


# --------------------------------------------------------------------------- keys


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(directory: Path, final_name: str, data: bytes, mode: int, fs: FsOps) -> Path:
    """Write ``data`` to a fresh hidden temp file (created with ``mode``, O_EXCL) and fsync it."""
    tmp = directory / f".{final_name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode`` whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fs.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def generate_keypair(out_dir: Path, name: str = "fleet", *, fs: FsOps = DEFAULT_FS) -> tuple[Path, Path]:
    """Write a new ed25519 key pair: ``<name>.key`` (PKCS8 PEM, 0600) and ``<name>.pub`` (0644).

    Never overwrites (``ConfigError`` naming the files that exist). Both files appear whole:
    temp file, fsync, rename, fsync of the folder; a failure leaves neither."""
    out_dir = Path(out_dir)
    if not KEY_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"

    def refuse_existing() -> None:
        existing = [str(p) for p in (key_path, pub_path) if os.path.lexists(p)]
        if existing:
            raise ConfigError(
                f"refusing to overwrite {' and '.join(existing)}: move them away or choose another --name"
            )

    refuse_existing()
    private = Ed25519PrivateKey.generate()
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    temps: list[Path] = []
    renamed: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        temps.append(_write_new(out_dir, key_path.name, key_pem, 0o600, fs))
        temps.append(_write_new(out_dir, pub_path.name, pub_pem, 0o644, fs))
        refuse_existing()  # again, just before the renames
        for tmp, dst in zip(temps, (key_path, pub_path), strict=True):
            fs.rename(tmp, dst)
            renamed.append(dst)
        fs.fsync_dir(out_dir)
    except OSError as exc:
        _cleanup(temps, renamed)
        raise ConfigError(f"cannot write the key pair in {out_dir}: {exc.strerror or exc}") from exc
    except BaseException:
        _cleanup(temps, renamed)
        raise
    return key_path, pub_path


def _cleanup(temps: Iterable[Path], renamed: Iterable[Path]) -> None:
    for p in (*temps, *renamed):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", p, exc)


def _read_key_file(path: Path, what: str, *, private: bool) -> bytes:
    """Read a small key file; ConfigError naming it when missing, unreadable, oversize or too open."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        hint = " (make one with `edge-agent keys generate`)" if private else ""
        raise ConfigError(f"{path}: no such {what} file{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the {what} ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file; give the {what} PEM file")
        if private and st.st_mode & 0o077:
            raise ConfigError(
                f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read or change the "
                f"private key; run `chmod 600 {path}` (and check who may have copied it)"
            )
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{path}: {st.st_size} bytes is over {MAX_KEY_FILE_BYTES}; not a {what}")
        chunks: list[bytes] = []
        while chunk := os.read(fd, MAX_KEY_FILE_BYTES + 1):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_KEY_FILE_BYTES:
                raise ConfigError(f"{path}: over {MAX_KEY_FILE_BYTES} bytes; not a {what}")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted ed25519 PEM private key; refused when group/world may read or write it."""
    path = Path(path)
    data = _read_key_file(path, "private key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path}: not an unencrypted PEM private key ({exc}); "
            "use a key made by `edge-agent keys generate`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An ed25519 PEM (SubjectPublicKeyInfo) public key; ConfigError naming the file otherwise."""
    path = Path(path)
    data = _read_key_file(path, "public key", private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc}); copy the fleet's .pub file again") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an ed25519 public key")
    return key


# --------------------------------------------------------------------------- trust store

_Fingerprint = tuple[Any, ...]


class TrustStore:
    """The trusted public keys: every ``*.pub`` in ``trust_dir`` (several during a rotation), by key id.

    A missing folder is an empty store. A bad key file is logged and skipped (see ``skipped``).
    ``reload()`` re-reads the folder when it or one of its key files changed; the verify
    functions call it first, so added and removed keys count from the next message on."""

    def __init__(self, trust_dir: Path | None) -> None:
        self._dir = None if trust_dir is None else Path(trust_dir)
        self._lock = threading.Lock()
        self._keys: Mapping[str, Ed25519PublicKey] = MappingProxyType({})
        self._sources: Mapping[str, Path] = MappingProxyType({})
        self._skipped: Mapping[Path, str] = MappingProxyType({})
        self._fingerprint: _Fingerprint | None = None
        self._where = str(self._dir) if self._dir is not None else "the given public keys"
        self.reload()

    @classmethod
    def from_keys(cls, keys: Iterable[Ed25519PublicKey], where: str = "the given public keys") -> TrustStore:
        """A fixed store of ``keys`` (no folder; ``reload`` does nothing)."""
        store = cls(None)
        store._keys = MappingProxyType({key_id(k): k for k in keys})
        store._where = where
        return store

    @property
    def trust_dir(self) -> Path | None:
        return self._dir

    @property
    def where(self) -> str:
        """Where the keys come from, for messages."""
        return self._where

    @property
    def keys(self) -> Mapping[str, Ed25519PublicKey]:
        """The trusted keys by key id (a read-only snapshot)."""
        return self._keys

    @property
    def sources(self) -> Mapping[str, Path]:
        """The file each key id was read from."""
        return self._sources

    @property
    def skipped(self) -> Mapping[Path, str]:
        """Key files that were not loaded, with the reason."""
        return self._skipped

    @property
    def empty(self) -> bool:
        return not self._keys

    def _scan(self) -> tuple[_Fingerprint, list[Path]]:
        """What identifies the folder's current content (folder and key file stats), and the key files."""
        assert self._dir is not None
        try:
            dir_mtime = self._dir.stat().st_mtime_ns
            entries = sorted(
                (e for e in os.scandir(self._dir) if e.name.endswith(".pub") and not e.name.startswith(".")),
                key=lambda e: e.name,
            )
        except FileNotFoundError:
            return ("missing",), []
        except OSError as exc:
            return ("unreadable", str(exc)), []
        parts: list[Any] = [dir_mtime]
        for e in entries:
            try:
                st = e.stat()
                parts.append((e.name, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError as exc:
                parts.append((e.name, str(exc)))
        return tuple(parts), [Path(e.path) for e in entries]

    def reload(self) -> bool:
        """Re-read the key files if the folder or one of them changed; True when it re-read."""
        if self._dir is None:
            return False
        with self._lock:
            fingerprint, files = self._scan()
            if fingerprint == self._fingerprint:
                return False
            if fingerprint[0] == "unreadable":
                log.error(
                    "trust: the folder %s cannot be read (%s): no key is trusted", self._dir, fingerprint[1]
                )
            keys: dict[str, Ed25519PublicKey] = {}
            sources: dict[str, Path] = {}
            skipped: dict[Path, str] = {}
            for path in files:
                try:
                    key = load_public_key(path)
                except ConfigError as exc:
                    log.warning("trust: skipping %s: %s", path, exc)
                    skipped[path] = str(exc)
                    continue
                kid = key_id(key)
                if kid in keys:
                    log.info("trust: %s holds key %s, already read from %s", path, kid, sources[kid])
                    continue
                keys[kid] = key
                sources[kid] = path
            self._keys = MappingProxyType(keys)
            self._sources = MappingProxyType(sources)
            self._skipped = MappingProxyType(skipped)
            self._fingerprint = fingerprint
            log.info("trust: %d key(s) from %s: %s", len(keys), self._dir, ", ".join(sorted(keys)) or "none")
            return True

    def public_key(self, kid: str) -> Ed25519PublicKey:
        """The trusted key ``kid`` (after a ``reload``); ``Rejected("unknown_key")`` otherwise."""
        self.reload()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            hint = f"no key is trusted in {self._where}: copy the fleet's .pub file there"
        else:
            hint = (
                f"the keys trusted in {self._where} are {', '.join(sorted(self._keys))}; "
                "copy the signing key's .pub file there if it is a new fleet key"
            )
        raise Rejected("unknown_key", f"signed by key {kid}, which is not trusted: {hint}")

    def verify_object(self, obj: Mapping[str, Any]) -> str:
        """Check ``obj``'s ``signature`` (over ``canonical_json`` of the rest); returns the key id."""
        if "signature" not in obj or "key_id" not in obj:
            missing = [k for k in ("key_id", "signature") if k not in obj]
            raise Rejected("unsigned", f"no {' or '.join(missing)}: the message is not signed")
        body = {k: v for k, v in obj.items() if k != "signature"}
        return _verify(self, obj["key_id"], obj["signature"], lambda: canonical_json(body))


# --------------------------------------------------------------------------- signing objects


def canonical_json(obj: Any) -> bytes:
    """The signed form: sorted keys, no spaces, UTF-8, no NaN/Infinity.

    ``Rejected("malformed")`` when ``obj`` has no JSON form (NaN, non-string keys, other types)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        raise Rejected("malformed", f"the content has no canonical JSON form ({exc})") from exc


def sign_object(obj: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``obj`` with ``key_id`` and ``signature`` (over everything but ``signature``)."""
    out = {k: v for k, v in obj.items() if k != "signature"}
    out["key_id"] = key_id(key.public_key())
    out["signature"] = base64.b64encode(key.sign(canonical_json(out))).decode("ascii")
    return out


def _decode_signature(signature: str) -> bytes:
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise Rejected("bad_signature", f"the signature is not valid base64 ({exc})") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise Rejected(
            "bad_signature", f"the signature is {len(raw)} bytes; an ed25519 signature is {SIGNATURE_BYTES}"
        )
    return raw


def _verify(trust: TrustStore, kid: Any, signature: Any, data: Callable[[], bytes]) -> str:
    if not isinstance(kid, str) or not KEY_ID_RE.fullmatch(kid):
        raise Rejected("malformed", f"'key_id' must be 16 lowercase hex digits, got {_short(kid)}")
    if not isinstance(signature, str):
        raise Rejected("malformed", f"'signature' must be a base64 string, got {type(signature).__name__}")
    key = trust.public_key(kid)
    raw = _decode_signature(signature)
    signed = data()
    try:
        key.verify(raw, signed)
    except InvalidSignature:
        raise Rejected(
            "bad_signature",
            f"the signature by key {kid} does not match the content: it was changed after signing, "
            "or signed with another key",
        ) from None
    return kid


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


# --------------------------------------------------------------------------- manifest signatures


def manifest_signature(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` content for ``manifest_bytes``."""
    sig = base64.b64encode(key.sign(manifest_bytes)).decode("ascii")
    return canonical_json({"key_id": key_id(key.public_key()), "signature": sig}) + b"\n"


def sign_bundle(bundle_dir: Path, key: Ed25519PrivateKey, *, fs: FsOps = DEFAULT_FS) -> Path:
    """Write ``bundle_dir/manifest.sig`` over the exact bytes of its ``manifest.json`` (atomically).

    The bundle must open and verify (manifest parses, model size and sha256 match): a bundle
    that cannot be installed is not signed. Raises ``BundleError`` / ``VerificationError``."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a bundle folder (sign a folder with a {MANIFEST})")
    bundle = open_bundle(bundle_dir, verify=True)
    mpath = bundle_dir / MANIFEST
    data = _read_capped(mpath, MAX_MANIFEST_BYTES, "manifest")
    if data is None:
        raise BundleError(f"{mpath}: disappeared while signing")
    if parse_manifest(data, str(mpath)) != bundle.manifest:
        raise BundleError(f"{mpath}: changed while it was being signed; sign again")
    out = bundle_dir / SIG_FILE
    try:
        atomic_write_bytes(out, manifest_signature(data, key), fs)
    except OSError as exc:
        raise BundleError(f"{out}: cannot write the signature ({exc.strerror or exc})") from exc
    return out


def verify_manifest_bytes(manifest_bytes: bytes, sig_bytes: bytes | None, trust: TrustStore) -> str:
    """Check ``manifest.sig`` against the exact manifest bytes; the key id, or ``Rejected``."""
    if sig_bytes is None:
        raise Rejected("unsigned", f"the bundle has no {SIG_FILE}: sign it with `edge-agent bundle sign`")
    if len(sig_bytes) > MAX_SIG_BYTES:
        raise Rejected(
            "malformed", f"{SIG_FILE} is {len(sig_bytes)} bytes, over the {MAX_SIG_BYTES}-byte cap"
        )
    try:
        obj = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("malformed", f"{SIG_FILE} is not UTF-8 JSON ({exc})") from exc
    if not isinstance(obj, dict) or set(obj) != {"key_id", "signature"}:
        raise Rejected("malformed", f'{SIG_FILE} must be a JSON object {{"key_id": ..., "signature": ...}}')
    return _verify(trust, obj["key_id"], obj["signature"], lambda: manifest_bytes)


def _read_capped(path: Path, cap: int, what: str) -> bytes | None:
    """At most ``cap + 1`` bytes of ``path``; None when it does not exist; BundleError otherwise."""
    try:
        with open(path, "rb") as fh:
            return fh.read(cap + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc


def verify_bundle_signature(bundle_dir: Path, trust: TrustStore) -> str:
    """Check ``bundle_dir``'s ``manifest.sig`` against its ``manifest.json``; returns the key id."""
    bundle_dir = Path(bundle_dir)
    mpath = bundle_dir / MANIFEST
    data = _read_capped(mpath, MAX_MANIFEST_BYTES, "manifest")
    if data is None:
        raise BundleError(f"{bundle_dir} has no {MANIFEST}: it is not a bundle folder")
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: over the {MAX_MANIFEST_BYTES}-byte limit for a manifest")
    return verify_manifest_bytes(data, _read_capped(bundle_dir / SIG_FILE, MAX_SIG_BYTES, "signature"), trust)


# --------------------------------------------------------------------------- job rules


@dataclass(frozen=True)
class JobContext:
    """What the device knows when it judges a job (from its persisted update record)."""

    device_id: str
    group: str | None
    seen: Callable[[str], bool]  # job ids and "nonce:<nonce>" marks already seen
    last_trusted_time: float  # the latest issued_at of any verified job (devices without an RTC)
    max_release_counter: int


def _utc(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:g}"


#: A job may be issued this far ahead of the device's clock (fleet clock skew).
MAX_FUTURE_SKEW_S = 600.0
#: A clock before this (2024-01-01) is not set (a device without an RTC before NTP): the
#: future check then waits for a set clock or a last trusted time to judge by.
PLAUSIBLE_CLOCK = 1_704_067_200.0


def check_job_rules(
    *,
    job_id: str,
    nonce: str,
    target: Mapping[str, Any],
    issued_at: int,
    expires_at: int,
    release_counter: int | None,
    ctx: JobContext,
    now: float,
) -> None:
    """The rules for a verified job, in order: replay, expired, not_for_this_device, downgrade.

    ``expired`` judges ``expires_at`` against ``max(now, ctx.last_trusted_time)``, so a device
    whose clock restarted at 1970 still refuses a job older than one it has verified."""
    if ctx.seen(job_id):
        raise Rejected("replay", f"job {job_id} was seen before; a new job needs a new job_id")
    if ctx.seen("nonce:" + nonce):
        raise Rejected("replay", f"job {job_id}: nonce {nonce} was seen before (a replayed message)")
    if expires_at <= issued_at:
        raise Rejected(
            "malformed", f"job {job_id}: expires_at {expires_at} is not after issued_at {issued_at}"
        )
    reference = max(now if now >= PLAUSIBLE_CLOCK else 0.0, ctx.last_trusted_time)
    if reference > 0 and issued_at > reference + MAX_FUTURE_SKEW_S:
        # accepted, it would raise the last trusted time past every later job's expiry
        raise Rejected(
            "malformed",
            f"job {job_id}: issued_at {_utc(issued_at)} is in the future (this device's time is "
            f"{_utc(reference)}): check the fleet's clock, and that issued_at is in seconds",
        )
    if ctx.last_trusted_time > now:
        judge, clock = "the last trusted time (issued_at of the newest verified job)", ctx.last_trusted_time
        hint = f"; the device clock says {_utc(now)}, behind it: is the clock set?"
    else:
        judge, clock, hint = "the device clock", now, ""
    if expires_at <= clock:
        raise Rejected(
            "expired",
            f"job {job_id} expired at {_utc(expires_at)}; {judge} says {_utc(clock)}{hint}",
        )
    _check_target(job_id, target, ctx)
    if release_counter is not None and release_counter < ctx.max_release_counter:
        raise Rejected(
            "downgrade",
            f"job {job_id}: release_counter {release_counter} is lower than {ctx.max_release_counter}, "
            "the highest installed here; publish the release with a higher counter",
        )


def _check_target(job_id: str, target: Mapping[str, Any], ctx: JobContext) -> None:
    if set(target) == {"devices"} and isinstance(target["devices"], (list, tuple)):
        if ctx.device_id not in target["devices"]:
            raise Rejected("not_for_this_device", f"job {job_id} targets other devices, not {ctx.device_id}")
        return
    if set(target) == {"group"} and isinstance(target["group"], str):
        if ctx.group is None or target["group"] != ctx.group:
            mine = f"this device's group is {ctx.group}" if ctx.group else "this device is in no group"
            raise Rejected("not_for_this_device", f"job {job_id} targets group {target['group']}; {mine}")
        return
    raise Rejected("malformed", f'job {job_id}: target must be {{"devices": [...]}} or {{"group": "..."}}')


def _version_tuple(text: str) -> tuple[int, ...]:
    """The leading dotted integers of a version string ("0.1.0rc1" -> (0, 1, 0)), zeros trimmed."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    parts = [int(p) for p in m.group(0).split(".")] if m else []
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check_compat(compat: Mapping[str, Any], *, agent_version: str, runtimes: Collection[str]) -> None:
    """``Rejected("incompatible")`` when the manifest's ``compat`` excludes this agent.

    ``min_agent_version`` is compared as dotted integers; ``runtimes`` (absent or empty: any)
    must name at least one runtime available here."""
    want = compat.get("min_agent_version")
    if want is not None:
        if not isinstance(want, str) or not re.fullmatch(r"\d+(\.\d+)*", want):
            raise Rejected("malformed", f"compat.min_agent_version {_short(want)} is not a dotted version")
        if _version_tuple(want) > _version_tuple(agent_version):
            raise Rejected(
                "incompatible",
                f"the bundle needs edge-agent {want} or later; this agent is {agent_version}: upgrade it",
            )
    needed = compat.get("runtimes")
    if needed:
        if not isinstance(needed, (list, tuple)) or not all(isinstance(r, str) for r in needed):
            raise Rejected("malformed", "compat.runtimes must be a list of runtime names")
        if not any(r in runtimes for r in needed):
            have = ", ".join(sorted(runtimes)) or "none"
            raise Rejected(
                "incompatible",
                f"the bundle runs on {', '.join(needed)}; this device has {have}",
            )


__all__ = [
    "KEY_ID_RE",
    "MAX_KEY_FILE_BYTES",
    "MAX_SIG_BYTES",
    "SIG_FILE",
    "TRUST_DIRNAME",
    "JobContext",
    "TrustStore",
    "canonical_json",
    "check_compat",
    "check_job_rules",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "manifest_signature",
    "sign_bundle",
    "sign_object",
    "trust_dir",
    "verify_bundle_signature",
    "verify_manifest_bytes",
]
