"""``edge-agent keys generate`` and ``edge-agent bundle sign|verify`` (ota/trust.py).

    edge-agent keys generate --out DIR [--name fleet]
    edge-agent bundle sign DIR --key KEY
    edge-agent bundle verify DIR (--pubkey PUB | --trust-dir DIR)

``register(subparsers)`` adds the ``keys`` group; agent/cli_models.py calls
``add_bundle_commands`` for ``sign`` and ``verify`` in its ``bundle`` group. A ``ConfigError``
(bad key file, existing key) is left to ``agent.cli.main``: ``edge-agent: error: ...``, exit 2.
``bundle verify`` exits 1 with the reason when the bundle is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inference.errors import EdgeAgentError

SubParsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser]


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from ota.trust import TRUST_DIRNAME, generate_keypair, key_id, load_public_key

    key_path, pub_path = generate_keypair(Path(args.out), args.name)
    kid = key_id(load_public_key(pub_path))
    print(f"private key: {key_path}  (mode 0600: keep it secret, off the devices)")
    print(f"public key:  {pub_path}")
    print(f"key id:      {kid}")
    print(
        f"Copy {pub_path.name} into <state>/{TRUST_DIRNAME}/ on every device "
        f"(under systemd /var/lib/edge-agent/{TRUST_DIRNAME}/); sign bundles with "
        f"`edge-agent bundle sign DIR --key {key_path}`."
    )
    return 0


def cmd_bundle_sign(args: argparse.Namespace) -> int:
    from ota.trust import key_id, load_private_key, sign_bundle

    key = load_private_key(Path(args.key))
    out = sign_bundle(Path(args.dir), key)
    print(f"{out}: signed with key {key_id(key.public_key())}")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from inference.bundle import open_bundle
    from ota.errors import ConfigError, Rejected
    from ota.trust import TrustStore, load_public_key, verify_bundle_signature

    if args.pubkey:
        trust = TrustStore.from_keys([load_public_key(Path(args.pubkey))], where=args.pubkey)
    else:
        trust = TrustStore(Path(args.trust_dir))
        if trust.empty:
            raise ConfigError(
                f"--trust-dir {args.trust_dir}: no usable *.pub key there"
                + "".join(f"\n  {p}: {why}" for p, why in trust.skipped.items())
            )
    bundle = Path(args.dir)
    try:
        kid = verify_bundle_signature(bundle, trust)
        open_bundle(bundle, verify=True)
    except Rejected as exc:
        print(f"FAIL {bundle}: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    except EdgeAgentError as exc:
        print(f"FAIL {bundle}: {exc}", file=sys.stderr)
        return 1
    print(f"{bundle}: signature OK (key {kid}); the model file matches the signed manifest")
    return 0


def add_bundle_commands(bsub: SubParsers) -> None:
    """``bundle sign`` and ``bundle verify``, added to the ``bundle`` group's subparsers."""
    p = bsub.add_parser(
        "sign",
        help="sign a bundle's manifest.json with a fleet private key (writes manifest.sig)",
        description="Check that the bundle opens and its model file matches the manifest, then write "
        "manifest.sig: an ed25519 signature over the exact bytes of manifest.json.",
    )
    p.add_argument("dir", metavar="DIR", help="bundle folder")
    p.add_argument("--key", required=True, metavar="KEY", help="private key (.key, mode 0600)")
    p.set_defaults(func=cmd_bundle_sign)

    p = bsub.add_parser(
        "verify",
        help="check a bundle's manifest.sig against a public key or a trust folder",
        description="Exit 0 when manifest.sig is a valid signature by a trusted key and the model "
        "file matches the manifest; exit 1 with the reason otherwise.",
    )
    p.add_argument("dir", metavar="DIR", help="bundle folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--pubkey", metavar="PUB", help="public key (.pub)")
    which.add_argument("--trust-dir", metavar="DIR", help="a folder of trusted *.pub keys (as on a device)")
    p.set_defaults(func=cmd_bundle_verify)


def register(subparsers: SubParsers) -> None:
    """The top-level ``keys`` group."""
    keys = subparsers.add_parser("keys", help="fleet signing keys for updates")
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = ksub.add_parser(
        "generate",
        help="make an ed25519 key pair: NAME.key (secret, 0600) and NAME.pub (for the devices)",
        description="Write DIR/NAME.key (PKCS8 PEM, mode 0600) and DIR/NAME.pub; never overwrites.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the key files")
    p.add_argument("--name", default="fleet", help="file name stem (default: fleet)")
    p.set_defaults(func=cmd_keys_generate)
