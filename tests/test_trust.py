"""ota/trust.py and its CLI: keys, signed objects and manifests, rotation, job rules, compat."""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import cli_models, cli_trust
from inference.errors import BundleError, ConfigError, EdgeAgentError, VerificationError
from ota.errors import Rejected
from ota.trust import (
    MAX_KEY_FILE_BYTES,
    MAX_SIG_BYTES,
    SIG_FILE,
    JobContext,
    TrustStore,
    canonical_json,
    check_compat,
    check_job_rules,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_bundle,
    sign_object,
    trust_dir,
    verify_bundle_signature,
    verify_manifest_bytes,
)
from tests.fixtures.ota import FaultFs, make_bundle


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def trust(tmp_path: Path, keys: tuple[Path, Path]) -> TrustStore:
    d = trust_dir(tmp_path / "state")
    d.mkdir(parents=True)
    shutil.copy(keys[1], d / "fleet.pub")
    return TrustStore(d)


@pytest.fixture
def key(keys: tuple[Path, Path]) -> Ed25519PrivateKey:
    return load_private_key(keys[0])


@contextmanager
def rejected(reason: str) -> Iterator[pytest.ExceptionInfo[Rejected]]:
    """``pytest.raises(Rejected)`` that also checks the reason code."""
    with pytest.raises(Rejected) as info:
        yield info
    assert info.value.reason == reason, f"{info.value.reason}: {info.value}"


# --------------------------------------------------------------------------- keys


def test_key_id_is_16_hex_of_sha256_of_the_raw_public_key() -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key_id(pub) == hashlib.sha256(raw).hexdigest()[:16]


def test_generate_round_trip_modes_and_pem_formats(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the .pub is 0644 whatever the umask
    try:
        key_path, pub_path = generate_keypair(tmp_path / "k", "ops")
    finally:
        os.umask(old)
    assert (key_path.name, pub_path.name) == ("ops.key", "ops.pub")
    assert mode(key_path) == 0o600
    assert mode(pub_path) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["ops.key", "ops.pub"]  # no temp files
    private, public = load_private_key(key_path), load_public_key(pub_path)
    assert key_id(private.public_key()) == key_id(public)
    public.verify(private.sign(b"x"), b"x")


@pytest.mark.parametrize("existing", ["fleet.key", "fleet.pub"])
def test_generate_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(ConfigError, match=f"refusing to overwrite .*{existing}"):
        generate_keypair(tmp_path)
    assert (tmp_path / existing).read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_generate_refuses_a_bad_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key name"):
        generate_keypair(tmp_path, "../evil")


@pytest.mark.parametrize(
    ("fail_at", "kinds"),
    [(1, ("fsync",)), (2, ("fsync",)), (3, ("fsync",)), (1, ("rename",)), (2, ("rename",))],
)
def test_generate_failure_leaves_no_file(tmp_path: Path, fail_at: int, kinds: tuple[str, ...]) -> None:
    fs = FaultFs(fail_at=fail_at, err=errno.ENOSPC, kinds=kinds)
    with pytest.raises(ConfigError, match="cannot write the key pair"):
        generate_keypair(tmp_path / "k", fs=fs)
    assert list((tmp_path / "k").iterdir()) == []
    generate_keypair(tmp_path / "k")  # and a retry works


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o700 | 0o010])
def test_load_private_key_refuses_group_or_world_access(keys: tuple[Path, Path], bad_mode: int) -> None:
    key_path = keys[0]
    key_path.chmod(bad_mode)
    with pytest.raises(ConfigError) as info:
        load_private_key(key_path)
    msg = str(info.value)
    assert str(key_path) in msg
    assert f"{bad_mode:04o}" in msg
    assert f"chmod 600 {key_path}" in msg
    key_path.chmod(0o400)  # owner-only read is fine
    load_private_key(key_path)


def _ecdsa_pem(private: bool) -> bytes:
    k = ec.generate_private_key(ec.SECP256R1())
    if private:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _encrypted_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such private key file"),
        (b"not a key", "not an unencrypted PEM private key"),
        (_ecdsa_pem(private=True), "not an ed25519 private key"),
        (_encrypted_pem(), "not an unencrypted PEM private key"),
        (b"x" * (MAX_KEY_FILE_BYTES + 1), "over"),
    ],
)
def test_load_private_key_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "k.key"
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(ConfigError, match=match):
        load_private_key(path)


def test_load_private_key_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_private_key(tmp_path / "d")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such public key file"),
        (b"garbage", "not a PEM public key"),
        (_ecdsa_pem(private=False), "not an ed25519 public key"),
        (b"x" * (MAX_KEY_FILE_BYTES + 1), "over"),
    ],
)
def test_load_public_key_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "k.pub"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_public_key(path)


# --------------------------------------------------------------------------- trust store


def _new_pub(folder: Path, name: str) -> Ed25519PrivateKey:
    key_path, _ = generate_keypair(folder, name)
    return load_private_key(key_path)


def test_trust_store_missing_folder_is_empty(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "nope")
    assert store.empty and dict(store.keys) == {}
    with rejected("unknown_key") as info:
        store.verify_object(sign_object({"a": 1}, Ed25519PrivateKey.generate()))
    assert "no key is trusted" in str(info.value)


def test_trust_store_unreadable_folder_trusts_nothing_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "trust").write_text("a file, not a folder")
    with caplog.at_level(logging.ERROR, logger="ota.trust"):
        store = TrustStore(tmp_path / "trust")
        for _ in range(3):
            with rejected("unknown_key"):
                store.verify_object(sign_object({"a": 1}, Ed25519PrivateKey.generate()))
    assert store.empty
    assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 1


def test_trust_store_skips_bad_files_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "trust"
    k = _new_pub(d, "good")
    (d / "bad.pub").write_text("not a key")
    (d / "big.pub").write_bytes(b"x" * (MAX_KEY_FILE_BYTES + 1))
    (d / "ecdsa.pub").write_bytes(_ecdsa_pem(private=False))
    (d / ".hidden.pub").write_text("ignored")
    (d / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="ota.trust"):
        store = TrustStore(d)
    assert list(store.keys) == [key_id(k.public_key())]
    assert store.sources[key_id(k.public_key())] == d / "good.pub"
    assert sorted(p.name for p in store.skipped) == ["bad.pub", "big.pub", "ecdsa.pub"]
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 3
    assert not store.empty


def test_trust_store_reload_follows_the_folder(tmp_path: Path) -> None:
    d = tmp_path / "trust"
    a = _new_pub(d, "a")
    store = TrustStore(d)
    assert store.reload() is False  # unchanged
    b = _new_pub(d, "b")
    assert store.reload() is True
    assert set(store.keys) == {key_id(a.public_key()), key_id(b.public_key())}
    (d / "a.pub").unlink()
    (d / "a.key").unlink()
    assert store.reload() is True
    assert set(store.keys) == {key_id(b.public_key())}
    # a key file replaced in place (same name) is noticed too
    c = Ed25519PrivateKey.generate()
    pem = c.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (d / "b.pub").write_bytes(pem)
    assert store.reload() is True
    assert set(store.keys) == {key_id(c.public_key())}


def test_rotation_either_key_verifies_and_a_removed_key_no_longer_does(tmp_path: Path) -> None:
    d = tmp_path / "trust"
    old, new = _new_pub(d, "old"), _new_pub(d, "new")
    store = TrustStore(d)
    job = {"job_id": "j1", "action": "rollback"}
    assert store.verify_object(sign_object(job, old)) == key_id(old.public_key())
    assert store.verify_object(sign_object(job, new)) == key_id(new.public_key())
    (d / "old.pub").unlink()  # rotation done: verify re-reads the folder first
    with rejected("unknown_key") as info:
        store.verify_object(sign_object(job, old))
    assert key_id(new.public_key()) in str(info.value)
    assert store.verify_object(sign_object(job, new)) == key_id(new.public_key())


# --------------------------------------------------------------------------- signed objects


def test_canonical_json_is_exactly_the_contract_form() -> None:
    obj = {"b": [1, 2.5, None, True], "a": "é✓", "c": {"z": 1, "y": "\n"}}
    assert canonical_json(obj) == '{"a":"é✓","b":[1,2.5,null,true],"c":{"y":"\\n","z":1}}'.encode()
    assert canonical_json(obj) == json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "x", "a": 2}, object()])
def test_canonical_json_refuses_what_has_no_json_form(bad: Any) -> None:
    with rejected("malformed"):
        canonical_json({"v": bad})


def test_sign_and_verify_object(trust: TrustStore, key: Ed25519PrivateKey) -> None:
    job = {"job_id": "j1", "nonce": "n" * 16, "target": {"devices": ["d1"]}, "issued_at": 1}
    signed = sign_object(job, key)
    assert "signature" not in job and "key_id" not in job  # not mutated
    assert signed["key_id"] == key_id(key.public_key())
    assert len(base64.b64decode(signed["signature"], validate=True)) == 64
    assert trust.verify_object(signed) == signed["key_id"]
    # the signature covers the canonical form: key order and JSON round trips do not matter
    reordered = dict(reversed(list(json.loads(json.dumps(signed)).items())))
    assert trust.verify_object(reordered) == signed["key_id"]
    # re-signing replaces the old signature
    assert trust.verify_object(sign_object(signed, key)) == signed["key_id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda o: o.update(job_id="j2"), "bad_signature"),
        (lambda o: o["target"].update(devices=["d1", "d2"]), "bad_signature"),
        (lambda o: o.update(extra=1), "bad_signature"),
        (lambda o: o.pop("nonce"), "bad_signature"),
        (lambda o: o.update(signature=base64.b64encode(b"\0" * 64).decode()), "bad_signature"),
        (lambda o: o.update(signature="!!not base64!!"), "bad_signature"),
        (lambda o: o.update(signature=o["signature"][:-4]), "bad_signature"),  # 63 bytes
        (lambda o: o.update(signature=base64.b64encode(b"\0" * 65).decode()), "bad_signature"),
        (lambda o: o.update(signature="é"), "bad_signature"),
        (lambda o: o.update(issued_at=float("nan")), "malformed"),
        (lambda o: o.update(signature=12), "malformed"),
        (lambda o: o.update(key_id=12), "malformed"),
        (lambda o: o.update(key_id="ABCDEF0123456789"), "malformed"),
        (lambda o: o.update(key_id="0" * 16), "unknown_key"),
        (lambda o: o.pop("signature"), "unsigned"),
        (lambda o: o.pop("key_id"), "unsigned"),
    ],
)
def test_verify_object_refusals(trust: TrustStore, key: Ed25519PrivateKey, change: Any, reason: str) -> None:
    signed = sign_object(
        {"job_id": "j1", "nonce": "n" * 16, "target": {"devices": ["d1"]}, "issued_at": 1}, key
    )
    change(signed)
    with rejected(reason):
        trust.verify_object(signed)


def test_signed_by_an_untrusted_key_is_unknown_key(trust: TrustStore) -> None:
    stranger = Ed25519PrivateKey.generate()
    with rejected("unknown_key") as info:
        trust.verify_object(sign_object({"job_id": "j1"}, stranger))
    assert key_id(stranger.public_key()) in str(info.value)
    assert str(trust.trust_dir) in str(info.value)


def test_key_id_pointing_at_another_trusted_key_is_bad_signature(tmp_path: Path) -> None:
    d = tmp_path / "trust"
    a, b = _new_pub(d, "a"), _new_pub(d, "b")
    signed = sign_object({"job_id": "j1"}, a)
    signed["key_id"] = key_id(b.public_key())  # the key id is signed too
    with rejected("bad_signature"):
        TrustStore(d).verify_object(signed)


# --------------------------------------------------------------------------- manifest signatures


def test_sign_bundle_and_verify(tmp_path: Path, trust: TrustStore, key: Ed25519PrivateKey) -> None:
    bundle = make_bundle(tmp_path / "src")
    before = sorted(p.name for p in bundle.iterdir())
    sig = sign_bundle(bundle, key)
    assert sig == bundle / SIG_FILE
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*before, SIG_FILE])  # no temp files
    obj = json.loads(sig.read_bytes())
    assert set(obj) == {"key_id", "signature"} and obj["key_id"] == key_id(key.public_key())
    key.public_key().verify(base64.b64decode(obj["signature"]), (bundle / "manifest.json").read_bytes())
    assert verify_bundle_signature(bundle, trust) == key_id(key.public_key())


def test_manifest_signature_covers_the_exact_bytes(
    tmp_path: Path, trust: TrustStore, key: Ed25519PrivateKey
) -> None:
    bundle = make_bundle(tmp_path / "src")
    sign_bundle(bundle, key)
    manifest = bundle / "manifest.json"
    data = manifest.read_bytes()
    manifest.write_bytes(data + b" ")  # same JSON, different bytes
    with rejected("bad_signature"):
        verify_bundle_signature(bundle, trust)
    manifest.write_bytes(data.replace(b'"version": 1', b'"version": 9'))
    with rejected("bad_signature"):
        verify_bundle_signature(bundle, trust)
    manifest.write_bytes(data)
    assert verify_bundle_signature(bundle, trust) == key_id(key.public_key())


@pytest.mark.parametrize(
    ("sig", "reason"),
    [
        (None, "unsigned"),
        (b"x" * (MAX_SIG_BYTES + 1), "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"not json", "malformed"),
        (b"[]", "malformed"),
        (b'{"key_id": "0123456789abcdef"}', "malformed"),
        (b'{"key_id": "0123456789abcdef", "signature": "", "x": 1}', "malformed"),
        (b'{"key_id": "0123456789abcdef", "signature": ""}', "unknown_key"),
    ],
)
def test_verify_manifest_bytes_refusals(trust: TrustStore, sig: bytes | None, reason: str) -> None:
    with rejected(reason):
        verify_manifest_bytes(b"{}", sig, trust)


def test_verify_manifest_bytes_bad_base64_and_wrong_length(trust: TrustStore, key: Ed25519PrivateKey) -> None:
    kid = key_id(key.public_key())
    for signature in ("***", base64.b64encode(b"\0" * 32).decode()):
        with rejected("bad_signature"):
            verify_manifest_bytes(b"{}", json.dumps({"key_id": kid, "signature": signature}).encode(), trust)


def test_verify_bundle_signature_missing_sig_and_read_errors(
    tmp_path: Path, trust: TrustStore, key: Ed25519PrivateKey
) -> None:
    bundle = make_bundle(tmp_path / "src")
    with rejected("unsigned") as info:
        verify_bundle_signature(bundle, trust)
    assert "edge-agent bundle sign" in str(info.value)
    (bundle / SIG_FILE).mkdir()  # unreadable as a file
    with pytest.raises(BundleError, match="cannot read the signature"):
        verify_bundle_signature(bundle, trust)
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        verify_bundle_signature(tmp_path / "empty", trust)


def test_sign_bundle_refuses_a_bundle_that_does_not_verify(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle = make_bundle(tmp_path / "src")
    (bundle / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(VerificationError, match="does not match the manifest"):
        sign_bundle(bundle, key)
    assert not (bundle / SIG_FILE).exists()
    with pytest.raises(BundleError, match="not a bundle folder"):
        sign_bundle(bundle / "model.onnx", key)
    broken = make_bundle(tmp_path / "src", "other", manifest={"schema": 1})
    with pytest.raises(BundleError, match="missing required key"):
        sign_bundle(broken, key)
    assert not (broken / SIG_FILE).exists()


def test_sign_bundle_write_failure_is_a_bundle_error(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle = make_bundle(tmp_path / "src")
    with pytest.raises(BundleError, match="cannot write the signature"):
        sign_bundle(bundle, key, fs=FaultFs(fail_at=1, kinds=("rename",)))
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx"]


# --------------------------------------------------------------------------- job rules

NONCE = "abcdefgh12345678"
BASE: dict[str, Any] = {
    "job_id": "j1",
    "nonce": NONCE,
    "target": {"devices": ["dev-1", "dev-2"]},
    "issued_at": 1_700_000_000,
    "expires_at": 1_700_003_600,
    "release_counter": 5,
}
CTX: dict[str, Any] = {
    "device_id": "dev-1",
    "group": "cams",
    "seen": (),
    "last_trusted_time": 0.0,
    "max_release_counter": 5,
}
NOW = 1_700_001_000.0


@pytest.mark.parametrize(
    ("job", "ctx", "now", "reason", "words"),
    [
        ({}, {}, NOW, None, ""),
        ({}, {"seen": ("j1",)}, NOW, "replay", "job j1 was seen"),
        ({}, {"seen": ("nonce:" + NONCE,)}, NOW, "replay", "nonce"),
        ({}, {"seen": (NONCE, "j0")}, NOW, None, ""),  # a bare nonce is not a job id mark
        ({}, {}, 1_700_003_600.0, "expired", "the device clock"),  # expires_at <= now
        ({}, {}, 1_700_003_599.5, None, ""),
        ({}, {"last_trusted_time": 1_700_003_600.0}, NOW, "expired", "last trusted time"),
        # clock restarted at 1970 (no RTC) but the device verified a later job: expired all the same
        ({}, {"last_trusted_time": 1_800_000_000.0}, 0.0, "expired", "is the clock set"),
        ({}, {"last_trusted_time": 1_700_000_500.0}, 0.0, None, ""),  # 1970 clock, job still valid
        ({"expires_at": 1_700_000_000}, {}, NOW, "malformed", "not after issued_at"),
        ({"target": {"devices": ["dev-2"]}}, {}, NOW, "not_for_this_device", "dev-1"),
        ({"target": {"group": "cams"}}, {}, NOW, None, ""),
        ({"target": {"group": "doors"}}, {}, NOW, "not_for_this_device", "group is cams"),
        ({"target": {"group": "cams"}}, {"group": None}, NOW, "not_for_this_device", "in no group"),
        ({"target": {}}, {}, NOW, "malformed", "target"),
        ({"target": {"group": "cams", "devices": ["dev-1"]}}, {}, NOW, "malformed", "target"),
        ({"target": {"devices": "dev-1"}}, {}, NOW, "malformed", "target"),
        ({"release_counter": 4}, {}, NOW, "downgrade", "lower than 5"),
        ({"release_counter": 5}, {}, NOW, None, ""),
        ({"release_counter": None}, {"max_release_counter": 99}, NOW, None, ""),
        # the order: a replay is reported as a replay even when it is also expired and a downgrade
        ({"release_counter": 1}, {"seen": ("j1",)}, 2e9, "replay", ""),
        ({"release_counter": 1}, {}, 2e9, "expired", ""),
    ],
)
def test_job_rules(
    job: dict[str, Any], ctx: dict[str, Any], now: float, reason: str | None, words: str
) -> None:
    c = {**CTX, **ctx}
    seen = frozenset(c.pop("seen"))
    context = JobContext(seen=seen.__contains__, **c)
    kwargs = {**BASE, **job}
    if reason is None:
        check_job_rules(**kwargs, ctx=context, now=now)
        return
    with rejected(reason) as info:
        check_job_rules(**kwargs, ctx=context, now=now)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("compat", "version", "runtimes", "reason"),
    [
        ({}, "0.1.0", {"onnx"}, None),
        ({"min_agent_version": "0.1.0"}, "0.1.0", {"onnx"}, None),
        ({"min_agent_version": "0.1"}, "0.1.0", {"onnx"}, None),
        ({"min_agent_version": "0.1.1"}, "0.1.0", {"onnx"}, "incompatible"),
        ({"min_agent_version": "0.2"}, "0.1.9", {"onnx"}, "incompatible"),
        ({"min_agent_version": "0.9.0"}, "0.10.0", {"onnx"}, None),  # integers, not strings
        ({"min_agent_version": "0.10"}, "0.9.5", {"onnx"}, "incompatible"),
        ({"min_agent_version": "1.0.0"}, "1.0.0rc1", {"onnx"}, None),
        ({"min_agent_version": "x"}, "0.1.0", {"onnx"}, "malformed"),
        ({"runtimes": ["tflite"]}, "0.1.0", {"onnx"}, "incompatible"),
        ({"runtimes": ["tflite"]}, "0.1.0", set(), "incompatible"),
        ({"runtimes": ["tflite", "onnx"]}, "0.1.0", {"onnx"}, None),
        ({"runtimes": []}, "0.1.0", {"onnx"}, None),
        ({"runtimes": "onnx"}, "0.1.0", {"onnx"}, "malformed"),
    ],
)
def test_check_compat(compat: dict[str, Any], version: str, runtimes: set[str], reason: str | None) -> None:
    if reason is None:
        check_compat(compat, agent_version=version, runtimes=runtimes)
        return
    with rejected(reason):
        check_compat(compat, agent_version=version, runtimes=runtimes)


# --------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    """The commands through a parser built like agent/cli.py, with its error handling."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_models.register(sub)
    cli_trust.register(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return 2
    except EdgeAgentError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return 1
    return code


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    def call(*argv: str) -> tuple[int, str, str]:
        code = run_cli(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield call


def test_cli_generate_sign_verify_tamper(tmp_path: Path, tiny_bundle: Path, cli: Any) -> None:
    kdir = tmp_path / "keys"
    code, out, err = cli("keys", "generate", "--out", str(kdir))
    assert code == 0, err
    kid = key_id(load_public_key(kdir / "fleet.pub"))
    assert str(kdir / "fleet.key") in out and str(kdir / "fleet.pub") in out and kid in out
    assert "trust/" in out
    assert mode(kdir / "fleet.key") == 0o600

    code, _, err = cli("keys", "generate", "--out", str(kdir))
    assert code == 2 and err.startswith("edge-agent: error: refusing to overwrite")

    code, out, err = cli("bundle", "sign", str(tiny_bundle), "--key", str(kdir / "fleet.key"))
    assert code == 0, err
    assert kid in out and (tiny_bundle / SIG_FILE).is_file()

    code, out, err = cli("bundle", "verify", str(tiny_bundle), "--pubkey", str(kdir / "fleet.pub"))
    assert code == 0, err
    assert f"signature OK (key {kid})" in out

    tdir = tmp_path / "state" / "trust"
    tdir.mkdir(parents=True)
    shutil.copy(kdir / "fleet.pub", tdir)
    code, out, err = cli("bundle", "verify", str(tiny_bundle), "--trust-dir", str(tdir))
    assert code == 0 and f"signature OK (key {kid})" in out, err

    manifest = tiny_bundle / "manifest.json"
    good = manifest.read_bytes()
    manifest.write_bytes(good.replace(b'"version": 3', b'"version": 4'))
    code, out, err = cli("bundle", "verify", str(tiny_bundle), "--pubkey", str(kdir / "fleet.pub"))
    assert code == 1 and "bad_signature" in err and "OK" not in out

    manifest.write_bytes(good)
    model = tiny_bundle / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # the manifest is intact, the model is not
    code, out, err = cli("bundle", "verify", str(tiny_bundle), "--trust-dir", str(tdir))
    assert code == 1 and "size" in err

    (tiny_bundle / SIG_FILE).unlink()
    code, _, err = cli("bundle", "verify", str(tiny_bundle), "--pubkey", str(kdir / "fleet.pub"))
    assert code == 1 and "unsigned" in err

    code, _, err = cli("bundle", "sign", str(tiny_bundle), "--key", str(kdir / "fleet.key"))
    assert code == 1 and "does not match the manifest" in err  # a broken bundle is not signed
    assert not (tiny_bundle / SIG_FILE).exists()


def test_cli_errors(tmp_path: Path, cli: Any) -> None:
    bundle = make_bundle(tmp_path / "src")
    kdir = tmp_path / "keys"
    key_path, _ = generate_keypair(kdir)
    key_path.chmod(0o644)
    code, _, err = cli("bundle", "sign", str(bundle), "--key", str(key_path))
    assert code == 2 and f"chmod 600 {key_path}" in err
    key_path.chmod(0o600)
    assert cli("bundle", "sign", str(bundle), "--key", str(key_path))[0] == 0

    other = tmp_path / "other"
    _, other_pub = generate_keypair(other)
    code, _, err = cli("bundle", "verify", str(bundle), "--pubkey", str(other_pub))
    assert code == 1 and "unknown_key" in err

    (tmp_path / "empty-trust").mkdir()
    (tmp_path / "empty-trust" / "bad.pub").write_text("nope")
    code, _, err = cli("bundle", "verify", str(bundle), "--trust-dir", str(tmp_path / "empty-trust"))
    assert code == 2 and "no usable *.pub key" in err and "bad.pub" in err

    code, _, err = cli("bundle", "verify", str(bundle), "--pubkey", str(tmp_path / "missing.pub"))
    assert code == 2 and "no such public key file" in err

    with pytest.raises(SystemExit):  # --pubkey and --trust-dir are exclusive, one is required
        run_cli(["bundle", "verify", str(bundle)])


def test_bundle_sign_and_verify_are_wired_into_edge_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    bundle = make_bundle(tmp_path / "src")
    key_path, pub_path = generate_keypair(tmp_path / "keys")
    assert main(["bundle", "sign", str(bundle), "--key", str(key_path)]) == 0
    assert main(["bundle", "verify", str(bundle), "--pubkey", str(pub_path)]) == 0
    assert "signature OK" in capsys.readouterr().out


def test_a_job_issued_in_the_future_is_refused_so_it_cannot_expire_every_later_job() -> None:
    """issued_at raises the last trusted time: one job far ahead of the clock (a fleet writing
    milliseconds) would make every later job expired. Refused once the device has a time."""
    from ota.trust import MAX_FUTURE_SKEW_S, PLAUSIBLE_CLOCK

    now = PLAUSIBLE_CLOCK + 1e8
    ctx = JobContext(device_id="cam-1", group=None, seen=lambda _: False, last_trusted_time=0.0,
                     max_release_counter=0)  # fmt: skip
    rules = {"job_id": "j", "nonce": "n" * 16, "target": {"devices": ["cam-1"]}, "release_counter": None}
    far = int(now * 1000)
    with pytest.raises(Rejected) as err:
        check_job_rules(**rules, issued_at=far, expires_at=far + 60, ctx=ctx, now=now)
    assert err.value.reason == "malformed" and "future" in str(err.value)
    near = int(now + MAX_FUTURE_SKEW_S / 2)
    check_job_rules(**rules, issued_at=near, expires_at=near + 60, ctx=ctx, now=now)  # fleet clock skew
    # a device whose clock is not set yet (no RTC, no NTP) takes its first job as its time
    check_job_rules(**rules, issued_at=int(now), expires_at=int(now) + 60, ctx=ctx, now=100.0)
