"""Upload targets: SigV4 against AWS's published S3 examples, and the credentials file."""

from __future__ import annotations

import calendar
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from inference.errors import ConfigError, TransientError
from monitoring import sigv4
from monitoring.credentials import CredentialsFile

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
SHA = hashlib.sha256(JPEG).hexdigest()
META = {"device": "cam-1", "strategy": "unsure", "scores": {"confidence": 0.42}, "ts": 1_700_000_000.5}
TS = 1_700_000_000.5  # 2023-11-14T22:13:20Z

# --- SigV4: AWS's published examples (S3 API reference, "Signature Calculations for the
# Authorization Header", examples GET Object and PUT Object) ---------------------------------
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_WHEN = calendar.timegm((2013, 5, 24, 0, 0, 0))


def test_sigv4_matches_aws_get_object_example() -> None:
    headers = sigv4.sign(
        "GET",
        "/test.txt",
        [],
        {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9"},
        sigv4.EMPTY_SHA256,
        access_key=AWS_KEY,
        secret_key=AWS_SECRET,
        region="us-east-1",
        when=AWS_WHEN,
    )
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_matches_aws_put_object_example() -> None:
    body = b"Welcome to Amazon S3."
    digest = hashlib.sha256(body).hexdigest()
    assert digest == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    headers = sigv4.sign(
        "PUT",
        "/test$file.text",
        [],
        {
            "Host": "examplebucket.s3.amazonaws.com",
            "Date": "Fri, 24 May 2013 00:00:00 GMT",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
        },
        digest,
        access_key=AWS_KEY,
        secret_key=AWS_SECRET,
        region="us-east-1",
        when=AWS_WHEN,
    )
    assert headers["Authorization"].endswith(
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )


def test_sigv4_canonical_query_and_session_token() -> None:
    text, signed = sigv4.canonical_request(
        "GET", "/a b/c", [("prefix", "x/y"), ("max-keys", "2")], {"Host": "h", "X-Amz-Meta": " a   b "}, "00"
    )
    assert text.splitlines()[1:4] == ["/a%20b/c", "max-keys=2&prefix=x%2Fy", "host:h"]
    assert "x-amz-meta:a b" in text and signed == "host;x-amz-meta"
    headers = sigv4.sign(
        "PUT",
        "/k",
        [],
        {"host": "h"},
        "00",
        access_key="A",
        secret_key="S",
        region="r",
        when=0,
        session_token="T",
    )
    assert headers["x-amz-security-token"] == "T"
    assert "x-amz-security-token" in headers["Authorization"]
    with pytest.raises(ValueError, match="Host"):
        sigv4.sign("PUT", "/k", [], {}, "00", access_key="A", secret_key="S", region="r", when=0)


# --- the credentials file ---------------------------------------------------------------------


def write_creds(path: Path, key: str = "AK", secret: str = "SK", **extra: Any) -> None:
    doc: dict[str, Any] = {"Version": 1, "AccessKeyId": key, "SecretAccessKey": secret, **extra}
    path.write_text(json.dumps(doc))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_credentials_file_rereads_on_change_and_near_expiry(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    clock = Clock(1_700_000_000.0)
    write_creds(path, SessionToken="T1", Expiration="2023-11-14T23:13:20Z")  # now + 1 h
    creds = CredentialsFile(path, clock=clock)
    first = creds.get()
    assert (first.access_key_id, first.session_token) == ("AK", "T1")
    assert first.expiration == clock.now + 3600
    assert "SK" not in repr(first) and "T1" not in repr(first)
    assert creds.get() is first  # unchanged file, far from expiry: cached

    write_creds(path, key="AK2", SessionToken="T2", Expiration="2023-11-14T23:13:20+00:00")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    assert creds.get().access_key_id == "AK2"

    # within 5 minutes of expiry: read again although the file did not change
    clock.now += 3600 - 200
    stamp = os.stat(path).st_mtime_ns
    write_creds(path, key="AK3", SessionToken="T3", Expiration="2023-11-14T23:13:20Z")
    os.utime(path, ns=(stamp, stamp))  # same size, same mtime: only the expiry rule sees it
    assert creds.get().access_key_id == "AK3"

    clock.now += 300
    with pytest.raises(TransientError, match=r"expired at 2023-11-14T23:13:20\+00:00.*rotated"):
        creds.get()
    write_creds(path, key="AK4", Expiration="2023-11-15T23:13:20Z")
    assert creds.get().access_key_id == "AK4"


def test_credentials_file_without_expiry_or_token(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path)
    got = CredentialsFile(path).get()
    assert (got.session_token, got.expiration) == (None, None)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        (None, TransientError, r"creds\.json cannot be read .*credentials_file"),
        ("{not json", ConfigError, r"not valid JSON"),
        ("[]", ConfigError, r"JSON object"),
        ('{"Version": 2, "AccessKeyId": "a", "SecretAccessKey": "b"}', ConfigError, r"Version must be 1"),
        ('{"Version": 1, "AccessKeyId": "a"}', ConfigError, r"SecretAccessKey must be a non-empty string"),
        ('{"Version": 1, "AccessKeyId": "", "SecretAccessKey": "b"}', ConfigError, r"AccessKeyId must"),
        (
            '{"Version": 1, "AccessKeyId": "a", "SecretAccessKey": "b", "Expiration": "soon"}',
            ConfigError,
            r"Expiration 'soon' is not an ISO 8601",
        ),
    ],
)
def test_credentials_file_bad_input(
    tmp_path: Path, text: str | None, error: type[Exception], match: str
) -> None:
    path = tmp_path / "creds.json"
    if text is not None:
        path.write_text(text)
    creds = CredentialsFile(path)
    with pytest.raises(error, match=match):
        creds.get()
    write_creds(path)  # fixed: the next call reads it
    assert creds.get().access_key_id == "AK"
