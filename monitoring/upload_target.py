"""Where spooled frames go: ``S3Target`` (any S3-compatible store, SigV4) and ``HttpTarget``.

Both have ``put(sha256, jpeg, meta, device, ts)``: one frame and its JSON sidecar, idempotent
(a retry of the same item lands on the same object / idempotency key), over one httpx client
per target with timeouts. Retries, back-off and scheduling are the caller's; ``put`` makes one
attempt and translates every outcome:

    2xx                              done
    5xx, 408/409/425/429, timeouts,  UploadUnavailable (TransientError) with ``retry_after``
    connection errors                (seconds, from a Retry-After header) when the server gave one
    401/403 and S3 credential codes  CredentialsRejected (TransientError), naming the credentials
                                     or token file: items wait for the file to change
    S3 RequestTimeTooSkewed          UploadUnavailable: the device clock is off
    other 4xx, 3xx                   UploadRefused (FatalError): this item is not retried (parked);
                                     ``whole_target`` is set when no item can succeed (no such
                                     bucket, wrong region)
    jpeg bytes != sha256             FatalError: the spooled item is corrupt

S3 keys: ``{prefix}/{device}/{YYYY-MM-DD}/{sha256}.jpg`` then ``.json`` (UTC date of ``ts``;
the JPEG first, so a sidecar always has its image). With an ``endpoint`` the bucket is in the
path (``{endpoint}/{bucket}/{key}``, what S3-compatible stores expect); without one, AWS's
virtual-hosted ``https://{bucket}.s3.{region}.amazonaws.com`` (path style for dotted names).

HTTP: the URL template's ``{device}``, ``{sha256}``, ``{ts}`` (UTC ``YYYYMMDDTHHMMSSZ``) and
``{date}`` (``YYYY-MM-DD``) are filled in. ``PUT`` sends the JPEG to the URL and the sidecar to
the same URL with ``.jpg`` replaced by ``.json`` (or ``.json`` appended); ``POST`` sends one
multipart form with ``image`` (``<sha256>.jpg``) and ``meta`` (``<sha256>.json``) parts. Every
request carries ``Idempotency-Key: <sha256>`` and, with a ``token_file``, ``Authorization:
Bearer <token>`` (re-read when the file changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from inference import http_headers
from inference.errors import ConfigError, FatalError, TransientError
from monitoring import sigv4
from monitoring.credentials import CredentialsFile

EXCERPT_CHARS = 300
_T = TypeVar("_T", bound="_Base")
MAX_RETRY_AFTER_S = 3600.0
TRANSIENT_4XX = frozenset({408, 409, 425, 429})
# S3 error codes that mean the credentials (not this item) are the problem.
S3_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccessDenied",
        "InvalidSecurity",
    }
)
S3_TARGET_CODES = frozenset(
    {"NoSuchBucket", "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidBucketName"}
)
S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "OperationAborted"}
)


class UploadUnavailable(TransientError):
    """The target cannot take the upload now; ``retry_after`` is the server's wish in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CredentialsRejected(TransientError):
    """The server refused the credentials or token; ``path`` is the file to fix or rotate."""

    def __init__(self, message: str, path: Path | None) -> None:
        super().__init__(message)
        self.path = path


class UploadRefused(FatalError):
    """The server refused this item (4xx): not worth retrying; park it and report."""

    def __init__(
        self, message: str, status: int, excerpt: str, *, code: str | None = None, whole_target: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.excerpt = excerpt
        self.code = code
        self.whole_target = whole_target


class UploadTarget(Protocol):
    def put(self, sha256: str, jpeg: bytes, meta: Mapping[str, Any], device: str, ts: float) -> None: ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header, at most ``MAX_RETRY_AFTER_S``; None if absent/bad."""
    return http_headers.parse_retry_after(value, now, MAX_RETRY_AFTER_S)


def _excerpt(resp: httpx.Response) -> str:
    text = resp.content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    return " ".join(text.split())[:EXCERPT_CHARS]


def _xml_field(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>([^<]*)</{name}>", text)
    return m.group(1).strip() if m else None


def _timeout(connect_s: float, io_s: float) -> httpx.Timeout:
    return httpx.Timeout(connect=connect_s, read=io_s, write=io_s, pool=connect_s)


def _check_digest(sha256: str, jpeg: bytes) -> None:
    actual = hashlib.sha256(jpeg).hexdigest()
    if actual != sha256.lower():
        raise FatalError(
            f"spooled item {sha256}: its JPEG has sha256 {actual}; the item is corrupt (quarantine it)"
        )


def _sidecar(meta: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(meta), sort_keys=True, separators=(",", ":"), default=str).encode()


def _utc(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime(fmt)


class _Base:
    """The shared client, send-and-translate and close."""

    def __init__(
        self,
        transport: httpx.BaseTransport | None,
        connect_timeout_s: float,
        io_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._client = httpx.Client(
            transport=transport,
            timeout=_timeout(connect_timeout_s, io_timeout_s),
            follow_redirects=False,
            headers={"User-Agent": "edge-agent"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: httpx.Request, label: str) -> httpx.Response:
        try:
            resp = self._client.send(request)
        except httpx.TimeoutException as exc:
            raise UploadUnavailable(f"{label}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise UploadUnavailable(f"{label}: {type(exc).__name__}: {exc or 'connection failed'}") from None
        if 200 <= resp.status_code < 300:
            return resp
        self._refuse(resp, label)

    def _refuse(self, resp: httpx.Response, label: str) -> NoReturn:
        raise NotImplementedError

    def _transient(self, resp: httpx.Response, label: str, detail: str) -> UploadUnavailable:
        retry_after = parse_retry_after(resp.headers.get("retry-after"), self._clock())
        wait = f"; Retry-After {retry_after:g} s" if retry_after is not None else ""
        return UploadUnavailable(f"{label}: HTTP {resp.status_code} {detail}{wait}", retry_after)


class S3Target(_Base):
    """``s3://bucket/prefix`` over SigV4 with credentials from a ``CredentialsFile``."""

    def __init__(
        self,
        url: str,
        *,
        credentials: CredentialsFile,
        region: str = "us-east-1",
        endpoint: str | None = None,
        transport: httpx.BaseTransport | None = None,
        connect_timeout_s: float = 10.0,
        io_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"[upload] url {url!r}: an S3 target is s3://bucket/prefix")
        if parts.query or parts.fragment:
            raise ConfigError(f"[upload] url {url!r}: no query or fragment in an s3:// URL")
        if not region:
            raise ConfigError("[upload] region must be set for an S3 target (like eu-west-1)")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.region = region
        self.credentials = credentials
        if endpoint:
            ep = urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.netloc:
                raise ConfigError(f"[upload] endpoint {endpoint!r}: expected http(s)://host[:port]")
            self._base = f"{ep.scheme}://{ep.netloc}{ep.path.rstrip('/')}/{self.bucket}"
        elif "." in self.bucket:
            self._base = f"https://s3.{region}.amazonaws.com/{self.bucket}"
        else:
            self._base = f"https://{self.bucket}.s3.{region}.amazonaws.com"
        super().__init__(transport, connect_timeout_s, io_timeout_s, clock)

    def key(self, sha256: str, device: str, ts: float, ext: str) -> str:
        parts = [self.prefix] if self.prefix else []
        parts += [device, _utc(ts, "%Y-%m-%d"), f"{sha256}.{ext}"]
        return "/".join(parts)

    def object_url(self, key: str) -> str:
        return f"{self._base}/{quote(key, safe='/-_.~')}"

    def put(self, sha256: str, jpeg: bytes, meta: Mapping[str, Any], device: str, ts: float) -> None:
        _check_digest(sha256, jpeg)
        self._put_object(self.key(sha256, device, ts, "jpg"), jpeg, "image/jpeg", sha256.lower())
        body = _sidecar(meta)
        self._put_object(self.key(sha256, device, ts, "json"), body, "application/json", None)

    def request(
        self,
        method: str,
        key: str,
        body: bytes = b"",
        content_type: str | None = None,
        digest: str | None = None,
    ) -> httpx.Request:
        """A SigV4-signed request for ``key`` (also used by tests to read objects back)."""
        creds = self.credentials.get()
        headers = {"Content-Type": content_type} if content_type else {}
        request = httpx.Request(method, self.object_url(key), content=body, headers=headers)
        to_sign = {"host": request.headers["host"]}
        if content_type:
            to_sign["content-type"] = content_type
        signed = sigv4.sign(
            method,
            request.url.path,
            request.url.params.multi_items(),
            to_sign,
            digest or hashlib.sha256(body).hexdigest(),
            access_key=creds.access_key_id,
            secret_key=creds.secret_access_key,
            session_token=creds.session_token,
            region=self.region,
            when=self._clock(),
        )
        request.headers.update(signed)
        return request

    def _put_object(self, key: str, body: bytes, content_type: str, digest: str | None) -> None:
        self._send(self.request("PUT", key, body, content_type, digest), f"S3 PUT s3://{self.bucket}/{key}")

    def get_object(self, key: str) -> bytes:
        """The object's bytes (for checks and tests); errors as for ``put``."""
        return self._send(self.request("GET", key), f"S3 GET s3://{self.bucket}/{key}").content

    def _refuse(self, resp: httpx.Response, label: str) -> NoReturn:
        status = resp.status_code
        excerpt = _excerpt(resp)
        code = _xml_field(resp.text, "Code") if excerpt.startswith("<") else None
        message = _xml_field(resp.text, "Message") if code else None
        detail = f"{code}: {message}" if code else excerpt or resp.reason_phrase
        if status >= 500 or status in TRANSIENT_4XX or code in S3_TRANSIENT_CODES:
            raise self._transient(resp, label, detail)
        if code == "RequestTimeTooSkewed":
            raise UploadUnavailable(
                f"{label}: HTTP {status} {detail}: the device clock is more than 15 min off the store's; "
                "check time sync (NTP)"
            )
        if status in (401, 403) or code in S3_CREDENTIAL_CODES:
            self.credentials.invalidate()
            raise CredentialsRejected(
                f"{label}: HTTP {status} {detail}: the S3 store refused the credentials in "
                f"{self.credentials.path} (wrong, expired or without s3:PutObject on {self.bucket}); "
                "uploads wait until the file changes",
                self.credentials.path,
            )
        if code == "NoSuchBucket":
            text = (
                f"{label}: the bucket {self.bucket!r} does not exist at {self._base.rsplit('/', 1)[0]} "
                f"(HTTP {status}); create it or fix [upload] url"
            )
        elif code in S3_TARGET_CODES:
            text = f"{label}: HTTP {status} {detail}; check [upload] url, endpoint and region ({self.region})"
        else:
            text = f"{label}: refused, HTTP {status} {detail}"
        raise UploadRefused(text, status, excerpt, code=code, whole_target=code in S3_TARGET_CODES)


_PLACEHOLDERS = frozenset({"device", "sha256", "ts", "date"})


class TokenFile:
    """A bearer token in a file (whitespace stripped), re-read when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def get(self) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                token = self.path.read_text(encoding="utf-8").strip()
                if not token or any(c in token for c in "\r\n"):
                    raise ConfigError(f"{self.path}: expected one line holding the upload token (token_file)")
                self._token, self._stamp = token, stamp
        except OSError as exc:
            self._stamp = None
            raise TransientError(
                f"upload token file {self.path} cannot be read ({exc.strerror or exc}); "
                "uploads wait until it is there (token_file in [upload])"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path}: the upload token is not UTF-8 text") from None
        return self._token

    def invalidate(self) -> None:
        self._stamp = None


class HttpTarget(_Base):
    """``http(s)://…`` with ``PUT`` to a URL template or ``POST`` multipart."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "PUT",
        token_file: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        connect_timeout_s: float = 10.0,
        io_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"[upload] url {url!r}: expected s3://bucket/prefix or http(s)://host/path")
        self.method = method.upper()
        if self.method not in ("PUT", "POST"):
            raise ConfigError(f"[upload] method {method!r}: expected PUT or POST")
        names = {f for _, f, _, _ in string.Formatter().parse(url) if f is not None}
        unknown = names - _PLACEHOLDERS
        if unknown or "" in names:
            raise ConfigError(
                f"[upload] url {url!r}: unknown placeholder(s) {sorted(unknown)}; use {{device}}, "
                "{sha256}, {ts}, {date}"
            )
        if self.method == "PUT" and "sha256" not in names:
            raise ConfigError(
                f"[upload] url {url!r}: a PUT URL needs {{sha256}} so each frame has its own URL"
            )
        self.template = url
        self.token = TokenFile(token_file) if token_file is not None else None
        super().__init__(transport, connect_timeout_s, io_timeout_s, clock)

    def url_for(self, sha256: str, device: str, ts: float) -> str:
        return self.template.format(
            device=quote(device, safe=""),
            sha256=sha256,
            ts=_utc(ts, "%Y%m%dT%H%M%SZ"),
            date=_utc(ts, "%Y-%m-%d"),
        )

    def put(self, sha256: str, jpeg: bytes, meta: Mapping[str, Any], device: str, ts: float) -> None:
        _check_digest(sha256, jpeg)
        sha256 = sha256.lower()
        headers = {"Idempotency-Key": sha256}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token.get()}"
        url = self.url_for(sha256, device, ts)
        sidecar = _sidecar(meta)
        if self.method == "POST":
            files = {
                "image": (f"{sha256}.jpg", jpeg, "image/jpeg"),
                "meta": (f"{sha256}.json", sidecar, "application/json"),
            }
            self._request(httpx.Request("POST", url, files=files, headers=headers), f"POST {url}")
            return
        jpeg_headers = {**headers, "Content-Type": "image/jpeg"}
        self._request(httpx.Request("PUT", url, content=jpeg, headers=jpeg_headers), f"PUT {url}")
        parts = urlsplit(url)
        path = parts.path[:-4] if parts.path.endswith(".jpg") else parts.path
        json_url = urlunsplit(parts._replace(path=path + ".json"))
        json_headers = {**headers, "Content-Type": "application/json"}
        self._request(
            httpx.Request("PUT", json_url, content=sidecar, headers=json_headers), f"PUT {json_url}"
        )

    def _request(self, request: httpx.Request, label: str) -> None:
        self._send(request, label)

    def _refuse(self, resp: httpx.Response, label: str) -> NoReturn:
        status = resp.status_code
        excerpt = _excerpt(resp)
        detail = excerpt or resp.reason_phrase
        if status >= 500 or status in TRANSIENT_4XX:
            raise self._transient(resp, label, detail)
        if status in (401, 403):
            where = self.token.path if self.token is not None else None
            if self.token is not None:
                self.token.invalidate()
            fix = f"the token in {where}" if where is not None else "no token (set token_file in [upload])"
            raise CredentialsRejected(
                f"{label}: HTTP {status} {detail}: the server refused {fix}; "
                "uploads wait until the file changes",
                where,
            )
        raise UploadRefused(f"{label}: refused, HTTP {status} {detail}", status, excerpt)


def make_target(
    url: str,
    *,
    method: str = "PUT",
    endpoint: str | None = None,
    region: str = "us-east-1",
    credentials_file: Path | None = None,
    token_file: Path | None = None,
    timeout_s: float = 60.0,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> S3Target | HttpTarget:
    """The target ``[upload]`` describes (no connection is made); ConfigError names the key."""
    if url.startswith("s3://"):
        if credentials_file is None:
            raise ConfigError(
                "[upload] credentials_file must be set for an s3:// url: an AWS credential_process JSON "
                "file (AccessKeyId, SecretAccessKey, SessionToken, Expiration) that the fleet may rotate"
            )
        return S3Target(
            url,
            credentials=CredentialsFile(credentials_file, clock=clock),
            region=region,
            endpoint=endpoint,
            transport=transport,
            io_timeout_s=timeout_s,
            clock=clock,
        )
    if endpoint:
        raise ConfigError("[upload] endpoint is for s3:// urls only; put the host in the http(s) url")
    return HttpTarget(
        url, method=method, token_file=token_file, transport=transport, io_timeout_s=timeout_s, clock=clock
    )
