"""Upload targets: SigV4 against AWS's published S3 examples and a real moto S3 server (signatures
checked), the credentials file, and ``HttpTarget`` against a real threaded HTTP server."""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from inference.errors import ConfigError, FatalError, TransientError
from monitoring import sigv4
from monitoring.credentials import CredentialsFile
from monitoring.upload_target import (
    CredentialsRejected,
    HttpTarget,
    S3Target,
    UploadRefused,
    UploadUnavailable,
    parse_retry_after,
)
from tests.fixtures.upload import HttpServer, Moto, write_creds

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


# --- S3 against a real moto server (tests/fixtures/upload.py) --------------------------------


def test_s3_put_writes_content_keyed_objects(moto_s3: Moto) -> None:
    target = moto_s3.target()
    target.put(SHA, JPEG, META, "cam-1", TS)
    jpg_key = f"fleet-a/cam-1/2023-11-14/{SHA}.jpg"
    assert target.key(SHA, "cam-1", TS, "jpg") == jpg_key
    assert target.get_object(jpg_key) == JPEG
    assert json.loads(target.get_object(jpg_key[:-4] + ".json")) == META

    target.put(SHA, JPEG, META, "cam-1", TS)  # a retry overwrites the same objects
    listing = moto_s3.client.send(target.request("GET", "")).text  # ListObjects on the bucket
    assert re.findall(r"<Key>(.+?)</Key>", listing) == [jpg_key, jpg_key[:-4] + ".json"]


def test_s3_unsigned_read_is_refused(moto_s3: Moto) -> None:
    """Signature checks are really on: the same GET without a signature is refused."""
    target = moto_s3.target()
    target.put(SHA, JPEG, META, "cam-1", TS)
    resp = moto_s3.client.get(f"/frames/fleet-a/cam-1/2023-11-14/{SHA}.jpg")
    assert resp.status_code == 403


def test_s3_device_names_and_no_prefix(moto_s3: Moto) -> None:
    target = moto_s3.target("s3://frames")
    target.put(SHA, JPEG, META, "cam 1+a", TS)
    assert target.get_object(f"cam 1+a/2023-11-14/{SHA}.jpg") == JPEG


def test_s3_missing_bucket_is_refused_clearly(moto_s3: Moto) -> None:
    target = moto_s3.target("s3://no-such-bucket/p")
    with pytest.raises(UploadRefused, match=r"bucket 'no-such-bucket' does not exist") as info:
        target.put(SHA, JPEG, META, "cam-1", TS)
    assert (info.value.status, info.value.code, info.value.whole_target) == (404, "NoSuchBucket", True)
    assert isinstance(info.value, FatalError)


def test_s3_wrong_secret_names_the_credentials_file(moto_s3: Moto) -> None:
    write_creds(moto_s3.creds_path, moto_s3.access_key, "not-the-secret")
    target = moto_s3.target()
    with pytest.raises(CredentialsRejected, match=r"SignatureDoesNotMatch.*s3-credentials\.json") as info:
        target.put(SHA, JPEG, META, "cam-1", TS)
    assert info.value.path == moto_s3.creds_path
    assert isinstance(info.value, TransientError)  # items wait; not parked
    write_creds(moto_s3.creds_path, moto_s3.access_key, moto_s3.secret)  # the fleet rotates the file
    target.put(SHA, JPEG, META, "cam-1", TS)


def test_s3_unknown_key_is_a_credentials_error(moto_s3: Moto) -> None:
    write_creds(moto_s3.creds_path, "AKIAUNKNOWN000000000", moto_s3.secret)
    with pytest.raises(CredentialsRejected, match=r"InvalidAccessKeyId"):
        moto_s3.target().put(SHA, JPEG, META, "cam-1", TS)


def test_s3_missing_credentials_file_is_transient(moto_s3: Moto) -> None:
    moto_s3.creds_path.unlink()
    with pytest.raises(TransientError, match=r"s3-credentials\.json cannot be read"):
        moto_s3.target().put(SHA, JPEG, META, "cam-1", TS)


def test_s3_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_creds(tmp_path / "c.json")
    target = S3Target(
        "s3://b/p", credentials=CredentialsFile(tmp_path / "c.json"), endpoint=f"http://127.0.0.1:{port}"
    )
    with target, pytest.raises(UploadUnavailable, match="ConnectError"):
        target.put(SHA, JPEG, META, "cam-1", TS)


def test_s3_target_urls_and_config_errors(tmp_path: Path) -> None:
    creds = CredentialsFile(tmp_path / "c.json")
    aws = S3Target("s3://frames/a/b/", credentials=creds, region="eu-west-1")
    assert aws.object_url(aws.key(SHA, "d", TS, "jpg")) == (
        f"https://frames.s3.eu-west-1.amazonaws.com/a/b/d/2023-11-14/{SHA}.jpg"
    )
    dotted = S3Target("s3://my.frames", credentials=creds, region="eu-west-1")
    assert dotted.object_url("k") == "https://s3.eu-west-1.amazonaws.com/my.frames/k"
    for bad in ("https://frames/p", "s3:///p", "s3://b/p?x=1"):
        with pytest.raises(ConfigError, match=r"\[upload\] url"):
            S3Target(bad, credentials=creds)
    with pytest.raises(ConfigError, match="endpoint"):
        S3Target("s3://b", credentials=creds, endpoint="s3.example")
    write_creds(tmp_path / "c.json")
    with pytest.raises(FatalError, match="corrupt"):
        aws.put("0" * 64, JPEG, META, "d", TS)
    for t in (aws, dotted):
        t.close()


# --- HTTP against a real threaded server (tests/fixtures/upload.py) ---------------------------


def test_http_put_stores_jpeg_and_sidecar_by_idempotency_key(http_server: HttpServer) -> None:
    target = http_server.target("/frames/{device}/{date}/{sha256}.jpg?t={ts}")
    target.put(SHA, JPEG, META, "cam 1", TS)
    target.put(SHA, JPEG, META, "cam 1", TS)  # a retry lands on the same key and URLs
    item = http_server.store.items[SHA]
    base = f"/frames/cam%201/2023-11-14/{SHA}"
    assert item == {
        f"{base}.jpg?t=20231114T221320Z": ("image/jpeg", JPEG),
        f"{base}.json?t=20231114T221320Z": (
            "application/json",
            json.dumps(META, sort_keys=True, separators=(",", ":")).encode(),
        ),
    }
    assert len(http_server.store.items) == 1 and len(http_server.store.requests) == 4


def test_http_post_multipart(http_server: HttpServer) -> None:
    target = http_server.target("/upload/{device}", method="POST")
    target.put(SHA, JPEG, META, "cam-1", TS)
    ((path, (ctype, body)),) = http_server.store.items[SHA].items()
    assert path == "/upload/cam-1" and ctype.startswith("multipart/form-data; boundary=")
    assert f'name="image"; filename="{SHA}.jpg"'.encode() in body and JPEG in body
    assert f'name="meta"; filename="{SHA}.json"'.encode() in body and b'"strategy":"unsure"' in body


def test_http_503_with_retry_after_is_transient(http_server: HttpServer) -> None:
    http_server.store.faults.append({"kind": "status", "status": 503, "headers": {"Retry-After": "120"}})
    target = http_server.target("/f/{sha256}.jpg")
    with pytest.raises(UploadUnavailable, match=r"HTTP 503.*Retry-After 120 s") as info:
        target.put(SHA, JPEG, META, "cam-1", TS)
    assert info.value.retry_after == 120.0
    target.put(SHA, JPEG, META, "cam-1", TS)  # the server is back
    assert SHA in http_server.store.items


def test_http_429_without_retry_after(http_server: HttpServer) -> None:
    http_server.store.faults.append({"kind": "status", "status": 429, "body": b"slow down"})
    with pytest.raises(UploadUnavailable, match="HTTP 429 slow down") as info:
        http_server.target("/f/{sha256}.jpg").put(SHA, JPEG, META, "cam-1", TS)
    assert info.value.retry_after is None


def test_http_400_is_refused_with_an_excerpt(http_server: HttpServer) -> None:
    http_server.store.faults.append({"kind": "status", "status": 400, "body": b"bad frame " + b"x" * 1000})
    with pytest.raises(UploadRefused, match=r"refused, HTTP 400 bad frame x+") as info:
        http_server.target("/f/{sha256}.jpg").put(SHA, JPEG, META, "cam-1", TS)
    assert info.value.status == 400 and len(info.value.excerpt) == 300
    assert not info.value.whole_target


def test_http_connection_reset_is_transient(http_server: HttpServer) -> None:
    http_server.store.faults.append({"kind": "reset"})
    with pytest.raises(UploadUnavailable, match=r"(ReadError|RemoteProtocolError|ConnectError)"):
        http_server.target("/f/{sha256}.jpg").put(SHA, JPEG, META, "cam-1", TS)


def test_http_timeout_is_transient(http_server: HttpServer) -> None:
    http_server.store.faults.append({"kind": "hang"})
    target = http_server.target("/f/{sha256}.jpg", io_timeout_s=0.2)
    with pytest.raises(UploadUnavailable, match="timed out"):
        target.put(SHA, JPEG, META, "cam-1", TS)


def test_http_wrong_token_names_the_token_file(http_server: HttpServer) -> None:
    http_server.token.write_text("wrong\n")
    target = http_server.target("/f/{sha256}.jpg")
    with pytest.raises(
        CredentialsRejected, match=r"HTTP 401 bad token: the server refused the token in .*upload-token"
    ):
        target.put(SHA, JPEG, META, "cam-1", TS)
    http_server.token.write_text("s3cret\n")
    target.put(SHA, JPEG, META, "cam-1", TS)
    assert http_server.store.requests[-1]["headers"]["Idempotency-Key"] == SHA


def test_http_token_file_problems(http_server: HttpServer, tmp_path: Path) -> None:
    target = http_server.target("/f/{sha256}.jpg", token_file=tmp_path / "missing")
    with pytest.raises(TransientError, match=r"token file .*missing cannot be read"):
        target.put(SHA, JPEG, META, "cam-1", TS)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="one line holding the upload token"):
        http_server.target("/f/{sha256}.jpg", token_file=tmp_path / "empty").put(SHA, JPEG, META, "cam-1", TS)
    assert http_server.store.requests == []


def test_http_config_errors() -> None:
    for url, match in (
        ("ftp://h/{sha256}", "expected s3://"),
        ("http://h/{device}.jpg", r"needs \{sha256\}"),
        ("http://h/{sha}.jpg", r"unknown placeholder\(s\) \['sha'\]"),
        ("http://h/{}.jpg", "unknown placeholder"),
    ):
        with pytest.raises(ConfigError, match=match):
            HttpTarget(url)
    with pytest.raises(ConfigError, match="PUT or POST"):
        HttpTarget("http://h/{sha256}", method="PATCH")


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", 0) == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parse_retry_after("999999", 0) == 3600.0
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None


def _assume_role(moto: Moto) -> tuple[str, str, str]:
    """Temporary credentials from moto's STS (AssumeRole, signed with the user's key), as a fleet
    service would write them for a device."""
    params = {
        "Action": "AssumeRole",
        "Version": "2011-06-15",
        "RoleArn": "arn:aws:iam::123456789012:role/uploader",
        "RoleSessionName": "cam-1",
    }
    body = urlencode(params).encode()
    ctype = "application/x-www-form-urlencoded"
    request = moto.client.build_request("POST", "/", content=body, headers={"Content-Type": ctype})
    request.headers.update(
        sigv4.sign(
            "POST",
            "/",
            [],
            {"host": request.headers["host"], "content-type": ctype},
            hashlib.sha256(body).hexdigest(),
            access_key=moto.access_key,
            secret_key=moto.secret,
            region="us-east-1",
            when=time.time(),
            service="sts",
        )
    )
    text = moto.client.send(request).text
    found = [
        re.search(rf"<{n}>(.+?)</{n}>", text) for n in ("AccessKeyId", "SecretAccessKey", "SessionToken")
    ]
    assert all(found), text
    key, secret, token = (m.group(1) for m in found if m)
    return key, secret, token


def test_s3_with_temporary_credentials(moto_s3: Moto) -> None:
    key, secret, token = _assume_role(moto_s3)
    write_creds(moto_s3.creds_path, key, secret, SessionToken=token, Expiration="2099-01-01T00:00:00Z")
    target = moto_s3.target()
    target.put(SHA, JPEG, META, "cam-1", TS)
    assert target.get_object(f"fleet-a/cam-1/2023-11-14/{SHA}.jpg") == JPEG
    write_creds(moto_s3.creds_path, key, secret, SessionToken="forged", Expiration="2099-01-01T00:00:00Z")
    with pytest.raises(CredentialsRejected, match=r"InvalidToken.*s3-credentials\.json"):
        target.put(SHA, JPEG, META, "cam-1", TS)


def test_s3_skewed_clock_says_so(tmp_path: Path) -> None:
    """moto does not check the request time; AWS answers this (its documented error body)."""
    xml = (
        "<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and "
        "the current time is too large.</Message></Error>"
    )
    transport = httpx.MockTransport(lambda request: httpx.Response(403, text=xml))
    write_creds(tmp_path / "c.json")
    target = S3Target("s3://b/p", credentials=CredentialsFile(tmp_path / "c.json"), transport=transport)
    with target, pytest.raises(UploadUnavailable, match=r"RequestTimeTooSkewed.*clock.*NTP"):
        target.put(SHA, JPEG, META, "cam-1", TS)
