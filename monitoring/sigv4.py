"""AWS Signature Version 4 for S3 requests (header-based), with ``hashlib`` and ``hmac`` only.

Why by hand: botocore (the signer boto3 uses) is ~31 MB installed (its service models, plus
jmespath and dateutil) and slow to import on a Raspberry Pi, for one function; httpx-auth's SigV4 pulls in
its own dependency set and signs S3 paths with the generic (double-encoding) rules. The
algorithm is short and fixed; this module is checked against AWS's published S3 examples
(tests/test_upload_target.py) and against a real S3-API server (moto) with signatures on.

S3 rules followed: the path is URI-encoded once (``/`` kept), the query sorted by encoded
name then value, header values trimmed with inner runs of spaces collapsed, the payload's
hex SHA-256 sent as ``x-amz-content-sha256`` and signed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 encoding as SigV4 wants it: unreserved kept, everything else %XX (upper case)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def amz_date(when: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` (UTC) of a Unix time."""
    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _canonical_query(query: Iterable[tuple[str, str]]) -> str:
    pairs = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in query)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(canonical header block, signed header names) of the headers to sign."""
    norm: dict[str, str] = {}
    for name, value in headers.items():
        key = name.strip().lower()
        val = " ".join(str(value).split())
        norm[key] = f"{norm[key]},{val}" if key in norm else val
    names = sorted(norm)
    return "".join(f"{n}:{norm[n]}\n" for n in names), ";".join(names)


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str], payload_sha256: str
) -> tuple[str, str]:
    """(canonical request, signed headers). ``path`` is the decoded path; it is encoded here."""
    block, signed = _canonical_headers(headers)
    text = "\n".join(
        [
            method.upper(),
            uri_encode(path or "/", keep_slash=True),
            _canonical_query(query),
            block,
            signed,
            payload_sha256,
        ]
    )
    return text, signed


def scope(date_stamp: str, region: str, service: str) -> str:
    return f"{date_stamp}/{region}/{service}/aws4_request"


def string_to_sign(request_text: str, x_amz_date: str, region: str, service: str) -> str:
    digest = hashlib.sha256(request_text.encode()).hexdigest()
    return "\n".join([ALGORITHM, x_amz_date, scope(x_amz_date[:8], region, service), digest])


def signing_key(secret_key: str, date_stamp: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date_stamp, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    payload_sha256: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    when: float,
    session_token: str | None = None,
    service: str = "s3",
) -> dict[str, str]:
    """The headers to add to a request: ``x-amz-date``, ``x-amz-content-sha256``, the session token
    when there is one, and ``Authorization``. ``headers`` must hold ``host`` and every header
    the request sends that should be signed (all of them are)."""
    x_date = amz_date(when)
    extra = {"x-amz-date": x_date, "x-amz-content-sha256": payload_sha256}
    if session_token:
        extra["x-amz-security-token"] = session_token
    lowered = {k.lower(): v for k, v in headers.items()}
    if "host" not in lowered:
        raise ValueError("SigV4: the Host header must be signed")
    to_sign = {**lowered, **extra}
    text, signed = canonical_request(method, path, query, to_sign, payload_sha256)
    sts = string_to_sign(text, x_date, region, service)
    signature = hmac.new(
        signing_key(secret_key, x_date[:8], region, service), sts.encode(), hashlib.sha256
    ).hexdigest()
    extra["Authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope(x_date[:8], region, service)}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return extra
