"""``edge-agent fleet``: sign jobs, deploy with a staged rollout, watch and roll back devices over MQTT.

    edge-agent fleet job (--device ID ... | --group G) --key KEY
                         [--action deploy|rollback|pin|sampling|capture]
                         [--manifest-url URL (--manifest-sha256 HEX | --manifest FILE)] [--version N]
                         [--policy FILE] [--frames N] [--expires 24h] [--job-id ID]
    edge-agent fleet deploy --broker URL (--device ID ... | --group G) --manifest-url URL
                         [--manifest-sha256 HEX | --manifest FILE] --key KEY
                         [--waves 1,10%,50%,100%] [--rate N/min] [--success-pct P]
                         [--abort-failed-pct P [--min-executed N]] [--rollback-on-abort]
                         [--wave-timeout S] [--timeout S] [--job-id ID] [--journal FILE]
    edge-agent fleet status --broker URL [--group G] [--watch] [--json] [--window S]
    edge-agent fleet rollback --broker URL (--device ID ... | --group G) --key KEY
    edge-agent fleet sampling --broker URL (--device ID ... | --group G) --policy FILE --key KEY [--wait S]
    edge-agent fleet capture --broker URL (--device ID ... | --group G) --frames N --key KEY [--wait S]

``fleet job`` needs no broker: it prints the signed job on one line, for
``mosquitto_pub -t edge/v1/ID/jobs/notify -s < job.json``. Without ``--manifest-sha256`` or
``--manifest``, ``deploy`` downloads the manifest to hash it (and to read its release counter).
``deploy`` exits 0 when every targeted device SUCCEEDED, 1 otherwise (failures, abort, timeout);
it journals the rollout (default ``<state>/fleet/<job id>.jsonl``): run it again with the same
``--job-id`` to pick up where it stopped. ``sampling`` sends a new sampling policy (``--policy``:
a TOML file with a ``[sampling]`` table, or the table as JSON), checked by the devices' own parser
before anything is signed or sent (exit 2 naming the key); ``capture`` asks for the next N
frames. Without ``--wait`` they exit 0 once the broker took the job; with it they wait up to S
seconds for the statuses (of a group: of the members whose retained state names it) and exit 0
when every one SUCCEEDED, 1 otherwise. Broker flags: ``--ca --cert --client-key --username
--password-file --prefix``. ``register(subparsers)`` adds the ``fleet`` group.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from inference.errors import BundleError, ConfigError, TransientError

if TYPE_CHECKING:
    import httpx

    from ota.fleet import DeviceView, FleetClient
    from ota.mqtt_link import MqttSettings
    from ota.rollout import DeviceJobStatus, RolloutAction, RolloutPlan

SubParsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|min|m|h|hour))?")
_PER_MIN = {"s": 60.0, "sec": 60.0, "min": 1.0, "m": 1.0, None: 1.0, "h": 1 / 60, "hour": 1 / 60}


# --------------------------------------------------------------------------- parsing helpers


def parse_duration(text: str, flag: str = "--expires") -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` -> seconds (> 0)."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{flag} {text!r}: give a positive duration like 90s, 15m, 24h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_rate(text: str) -> float:
    """``10/min``, ``1/s``, ``30/h`` or a bare number (per minute) -> devices per minute."""
    m = _RATE_RE.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"--rate {text!r}: give a positive rate like 10/min, 1/s or 30/h")
    return float(m.group(1)) * _PER_MIN[m.group(2)]


def manifest_facts(data: bytes, where: str) -> tuple[str, int]:
    """(sha256 of the exact bytes, release_counter) of a manifest.json; ConfigError when it is not one."""
    from inference.bundle import parse_manifest

    try:
        manifest = parse_manifest(data, where)
    except BundleError as err:
        raise ConfigError(f"{where}: not a usable manifest.json: {err}") from err
    return hashlib.sha256(data).hexdigest(), manifest.release_counter


def read_manifest(path: Path) -> tuple[str, int]:
    from inference.bundle import MAX_MANIFEST_BYTES

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--manifest {path}: cannot read it ({exc.strerror or exc})") from exc
    return manifest_facts(data, str(path))


def fetch_manifest(url: str, client: httpx.Client | None = None, timeout: float = 30.0) -> tuple[str, int]:
    """Download ``url`` (at most the manifest size limit) and return ``manifest_facts``."""
    import httpx

    from inference.bundle import MAX_MANIFEST_BYTES

    own = client is None
    http = client or httpx.Client(timeout=timeout, follow_redirects=True)
    try:
        with http.stream("GET", url) as resp:
            if resp.status_code >= 400:
                raise ConfigError(f"--manifest-url {url}: HTTP {resp.status_code}; is the bundle published?")
            data = b""
            for chunk in resp.iter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise ConfigError(
                        f"--manifest-url {url}: over {MAX_MANIFEST_BYTES} bytes; not a manifest"
                    )
    except httpx.HTTPError as exc:
        raise TransientError(f"--manifest-url {url}: cannot download it ({exc})") from exc
    finally:
        if own:
            http.close()
    return manifest_facts(data, url)


def _manifest_args(args: argparse.Namespace, *, download: bool) -> tuple[str, int | None]:
    """(sha256, release_counter) from --manifest-sha256 / --manifest, or by downloading the URL."""
    rc: int | None = args.release_counter
    if args.manifest:
        sha, counter = read_manifest(Path(args.manifest))
        if args.manifest_sha256 and args.manifest_sha256 != sha:
            raise ConfigError(f"--manifest-sha256 does not match {args.manifest} (its sha256 is {sha})")
        return sha, counter if rc is None else rc
    if args.manifest_sha256:
        if not re.fullmatch(r"[0-9a-f]{64}", args.manifest_sha256):
            raise ConfigError("--manifest-sha256: give 64 lowercase hex digits")
        return args.manifest_sha256, rc
    if not download:
        raise ConfigError("a deploy job needs --manifest-sha256 HEX or --manifest FILE")
    sha, counter = fetch_manifest(args.manifest_url)
    return sha, counter if rc is None else rc


def _check_ids(args: argparse.Namespace) -> None:
    from ota.protocol import check_id

    for d in args.device or ():
        check_id(d, "--device")
    if args.group is not None:
        check_id(args.group, "--group", device=False)
    if getattr(args, "job_id", None) is not None:
        check_id(args.job_id, "--job-id", device=False)


def read_policy(path: Path) -> dict[str, Any]:
    """The ``[sampling]`` table of a TOML file (a whole agent config will do), or a JSON file
    holding the table itself; checked by ``parse_policy`` (ConfigError naming file and key)."""
    import tomllib

    from monitoring.sampling_policy import parse_policy

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"--policy {path}: cannot read it ({why})") from exc
    if text.lstrip().startswith("{"):
        try:
            table = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--policy {path}: not JSON ({exc})") from exc
        where = f"{path}"
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--policy {path}: not TOML ({exc})") from exc
        if "sampling" not in doc:
            raise ConfigError(f"--policy {path}: no [sampling] table; give one, or the table as JSON")
        table, where = doc["sampling"], f"{path} [sampling]"
    if not isinstance(table, dict):
        raise ConfigError(f"--policy {path}: the sampling policy must be a table, got {table!r}")
    parse_policy(table, where)
    return table


def _key(args: argparse.Namespace) -> Any:
    from ota.trust import load_private_key

    return load_private_key(Path(args.key))


def mqtt_settings(args: argparse.Namespace, client_id: str, *, session: bool) -> MqttSettings:
    """The broker flags as ``MqttSettings``; ``session``: a persistent session (statuses wait)."""
    from ota.mqtt_link import MqttSettings

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return MqttSettings(
        url=args.broker,
        client_id=client_id,
        ca=path(args.ca),
        cert=path(args.cert),
        key=path(args.client_key),
        username=args.username,
        password_file=path(args.password_file),
        clean_start=not session,
        session_expiry_s=86400 if session else 0,
    )


def _client(args: argparse.Namespace, client_id: str, *, session: bool, key: Any = None) -> FleetClient:
    from ota.fleet import FleetClient

    return FleetClient(mqtt_settings(args, client_id, session=session), prefix=args.prefix, key=key)


# --------------------------------------------------------------------------- fleet job


def cmd_job(args: argparse.Namespace) -> int:
    from ota.fleet import make_job
    from ota.protocol import Topics
    from ota.trust import canonical_json

    _check_ids(args)
    sha: str | None = None
    rc: int | None = None
    if args.action == "deploy":
        if not args.manifest_url:
            raise ConfigError("a deploy job needs --manifest-url")
        sha, rc = _manifest_args(args, download=False)
    elif args.manifest_url or args.manifest or args.manifest_sha256:
        raise ConfigError(f"a {args.action} job takes no manifest")
    if (args.action == "sampling") != (args.policy is not None):
        raise ConfigError("--policy FILE goes with --action sampling (and it needs one)")
    if (args.action == "capture") != (args.frames is not None):
        raise ConfigError("--frames N goes with --action capture (and it needs one)")
    policy = read_policy(Path(args.policy)) if args.policy is not None else None
    job = make_job(
        _key(args),
        action=args.action,
        job_id=args.job_id,
        devices=args.device,
        group=args.group,
        manifest_url=args.manifest_url,
        manifest_sha256=sha,
        release_counter=rc,
        version=args.version,
        sampling=policy,
        frames=args.frames,
        expires_in_s=parse_duration(args.expires),
        now=time.time(),
    )
    sys.stdout.write(canonical_json(job).decode("utf-8") + "\n")
    topics = Topics(args.prefix)
    where = (
        [topics.group_notify(args.group)] if args.group else [topics.device_notify(d) for d in args.device]
    )
    print(f"job {job['job_id']}: publish it (QoS 1) to {', '.join(where)}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- fleet deploy


def _plan(args: argparse.Namespace, devices: Sequence[str]) -> RolloutPlan:
    from ota.rollout import RolloutPlan, parse_waves

    if args.min_executed is not None and args.abort_failed_pct is None:
        raise ConfigError("--min-executed goes with --abort-failed-pct")
    return RolloutPlan(
        devices=list(devices),
        waves=parse_waves(args.waves) if args.waves else None,
        rate_per_min=parse_rate(args.rate) if args.rate else None,
        success_threshold_pct=args.success_pct,
        abort_failed_pct=args.abort_failed_pct,
        min_executed=args.min_executed or 1,
        rollback_on_abort=args.rollback_on_abort,
        wave_timeout_s=parse_duration(args.wave_timeout, "--wave-timeout") if args.wave_timeout else None,
    )


def _journal_path(args: argparse.Namespace, job_id: str) -> Path:
    if args.journal:
        return Path(args.journal)
    from agent.paths import default_state_dir

    return default_state_dir() / "fleet" / f"{job_id}.jsonl"


def _progress(out: TextIO) -> Callable[[RolloutAction, Mapping[str, DeviceJobStatus]], None]:
    last: list[str] = []

    def report(action: RolloutAction, statuses: Mapping[str, DeviceJobStatus]) -> None:
        c = action.counts
        line = (
            f"wave {action.wave}/{action.waves}: {c.succeeded} succeeded, {c.failed} failed, "
            f"{c.in_progress} in progress, {c.total - c.started} waiting"
        )
        if action.send:
            line += f"; sending to {' '.join(action.send)}"
        if action.rollback:
            line += f"; rolling back {' '.join(action.rollback)}"
        if action.aborted and action.reason:
            line += f"; ABORTED: {action.reason}"
        if not last or last[0] != line:
            print(line, file=out, flush=True)
            last[:] = [line]

    return report


def cmd_deploy(args: argparse.Namespace) -> int:
    from ota.fleet import DeployJob, new_job_id

    _check_ids(args)
    sha, rc = _manifest_args(args, download=True)
    key = _key(args)
    job_id = args.job_id or new_job_id("deploy", time.time())
    expires = parse_duration(args.expires)
    with _client(args, f"fleet-{job_id}", session=True, key=key) as fleet:
        fleet.watch()
        fleet.connect(args.connect_timeout)
        devices = list(args.device or ())
        if args.group:
            devices = fleet.members(args.group)
            if not devices:
                raise ConfigError(
                    f"no device's retained state names group {args.group} on {args.broker} "
                    f"(prefix {args.prefix}); name the devices with --device"
                )
        plan = _plan(args, devices)
        journal = _journal_path(args, job_id)
        print(
            f"job {job_id}: {len(plan.devices)} device(s) in {len(plan.wave_devices())} wave(s); "
            f"journal {journal} (rerun with --job-id {job_id} to resume)",
            flush=True,
        )
        try:
            result = fleet.run_rollout(
                plan,
                DeployJob(job_id, args.manifest_url, sha, rc, expires),
                on_update=_progress(sys.stdout),
                timeout=parse_duration(args.timeout, "--timeout") if args.timeout else None,
                journal=journal,
                group=args.group if args.group and not args.waves and not args.rate else None,
            )
        except KeyboardInterrupt:
            print(f"\ninterrupted: resume with --job-id {job_id}", file=sys.stderr)
            return 130
    _print_summary(result.devices, result.statuses, sys.stdout)
    if result.succeeded:
        print(f"job {job_id}: every device SUCCEEDED")
        return 0
    if result.rolled_back:
        print(f"rolled back: {' '.join(result.rolled_back)}")
    why = result.reason or "some devices did not succeed"
    state = "ABORTED" if result.aborted else "TIMED OUT" if result.timed_out else "COMPLETE with failures"
    print(f"job {job_id}: {state}: {why}")
    return 1


def _print_summary(devices: Sequence[str], statuses: Mapping[str, DeviceJobStatus], out: TextIO) -> None:
    rows = [("DEVICE", "STATUS", "STEP/DETAIL", "REASON")]
    for d in devices:
        s = statuses.get(d)
        if s is None:
            rows.append((d, "-", "", ""))
        else:
            rows.append((d, s.status.value, s.step or s.detail or "", s.reason or ""))
    _table(rows, out)


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


# --------------------------------------------------------------------------- fleet status


def _age(now: float, ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def status_rows(views: Sequence[DeviceView], now: float) -> list[tuple[str, ...]]:
    """The status table: a header and one row per device."""
    rows: list[tuple[str, ...]] = [("DEVICE", "ONLINE", "MODEL", "VERSION", "JOB", "STATUS", "STEP", "AGE")]
    for v in views:
        online = "-" if v.online is None else "yes" if v.online else "no"
        rows.append(
            (
                v.device,
                online,
                v.model or "-",
                "-" if v.version is None else str(v.version),
                v.job_id or "-",
                "-" if v.status is None else v.status.value,
                v.step or v.detail or "-",
                _age(now, v.last_seen),
            )
        )
    return rows


def _selected(fleet: FleetClient, group: str | None) -> list[DeviceView]:
    views = fleet.views()
    return [views[d] for d in sorted(views) if group is None or views[d].group == group]


def cmd_status(args: argparse.Namespace) -> int:
    if args.group is not None:
        from ota.protocol import check_id

        check_id(args.group, "--group", device=False)
    with _client(args, f"fleet-status-{secrets.token_hex(6)}", session=False) as fleet:
        fleet.watch()
        fleet.connect(args.connect_timeout)
        fleet.wait_for(lambda: False, args.window)  # statuses are not retained: listen a moment
        if not args.watch:
            _show(fleet, args, sys.stdout)
            return 0
        tty = sys.stdout.isatty() and not args.json
        shown: dict[str, Any] = {}
        try:
            while True:
                seen = fleet.changes
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J")
                    _show(fleet, args, sys.stdout)
                else:
                    _show_changes(fleet, args, shown, sys.stdout)
                sys.stdout.flush()
                fleet.wait_for(functools.partial(_changed_since, fleet, seen), 1.0 if tty else None)
        except KeyboardInterrupt:
            return 0


def _changed_since(fleet: FleetClient, seen: int) -> bool:
    return fleet.changes != seen


def _show(fleet: FleetClient, args: argparse.Namespace, out: TextIO) -> None:
    views = _selected(fleet, args.group)
    if args.json:
        json.dump([v.to_json() for v in views], out, indent=2)
        out.write("\n")
        return
    if not views:
        where = f" in group {args.group}" if args.group else ""
        print(f"no device{where} has published a state on {args.broker} (prefix {args.prefix})", file=out)
        return
    _table(status_rows(views, time.time()), out)


def _show_changes(fleet: FleetClient, args: argparse.Namespace, shown: dict[str, Any], out: TextIO) -> None:
    """Plain output for ``--watch`` off a terminal: one line per device whose view changed."""
    now = time.time()
    for v in _selected(fleet, args.group):
        key = v.to_json()
        if shown.get(v.device) == key:
            continue
        shown[v.device] = key
        if args.json:
            out.write(json.dumps(key, sort_keys=True) + "\n")
        else:
            print("  ".join(status_rows([v], now)[1]), file=out)


# --------------------------------------------------------------------------- fleet rollback


def cmd_rollback(args: argparse.Namespace) -> int:
    _check_ids(args)
    key = _key(args)
    with _client(args, f"fleet-rollback-{secrets.token_hex(6)}", session=False, key=key) as fleet:
        fleet.connect(args.connect_timeout)
        job_id = fleet.rollback(devices=args.device, group=args.group, job_id=args.job_id)
    where = f"group {args.group}" if args.group else " ".join(sorted(set(args.device)))
    print(f"rollback job {job_id} sent to {where}")
    return 0


# --------------------------------------------------------------------------- fleet sampling / capture


def _send_and_wait(args: argparse.Namespace, action: str, send: Callable[[FleetClient], str]) -> int:
    """Connect, ``send`` the job, then (``--wait``) wait for the statuses: exit 0 or 1."""
    key = _key(args)
    where = f"group {args.group}" if args.group else " ".join(sorted(set(args.device)))
    with _client(args, f"fleet-{action}-{secrets.token_hex(6)}", session=False, key=key) as fleet:
        if args.wait is not None:
            fleet.watch()  # before the job goes out: statuses are not retained
        fleet.connect(args.connect_timeout)
        devices = sorted(set(args.device or ())) if not args.group else fleet.members(args.group)
        job_id = send(fleet)
        print(f"{action} job {job_id} sent to {where}", flush=True)
        if args.wait is None:
            return 0
        statuses = fleet.wait_jobs(job_id, devices, args.wait)
    shown = sorted(set(devices) | set(statuses))
    _print_summary(shown, statuses, sys.stdout)
    if shown and all(d in statuses and statuses[d].status.value == "SUCCEEDED" for d in shown):
        print(f"{action} job {job_id}: every device SUCCEEDED")
        return 0
    waiting = [d for d in shown if d not in statuses or not statuses[d].terminal]
    if not shown:
        print(f"{action} job {job_id}: no device answered within {args.wait:g} s")
    elif waiting:
        print(f"{action} job {job_id}: no final status within {args.wait:g} s from {' '.join(waiting)}")
    else:
        print(f"{action} job {job_id}: not every device SUCCEEDED")
    return 1


def cmd_sampling(args: argparse.Namespace) -> int:
    _check_ids(args)
    policy = read_policy(Path(args.policy))  # refused here, before a key is read or a broker reached
    expires = parse_duration(args.expires)
    return _send_and_wait(
        args,
        "sampling",
        lambda fleet: fleet.sampling(
            args.device, args.group, policy=policy, job_id=args.job_id, expires_in_s=expires
        ),
    )


def cmd_capture(args: argparse.Namespace) -> int:
    from ota.protocol import MAX_CAPTURE_FRAMES

    _check_ids(args)
    if not 1 <= args.frames <= MAX_CAPTURE_FRAMES:
        raise ConfigError(f"--frames {args.frames}: give 1 to {MAX_CAPTURE_FRAMES}")
    expires = parse_duration(args.expires)
    return _send_and_wait(
        args,
        "capture",
        lambda fleet: fleet.capture(
            args.device, args.group, frames=args.frames, job_id=args.job_id, expires_in_s=expires
        ),
    )


# --------------------------------------------------------------------------- parser


def _target(p: argparse.ArgumentParser) -> None:
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--device", action="append", metavar="ID", help="a device id (repeat for several)")
    t.add_argument("--group", metavar="G", help="a group of devices")


def _broker(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", required=True, metavar="URL", help="mqtt://host[:1883] or mqtts://host[:8883]")
    g.add_argument("--ca", metavar="FILE", help="CA bundle for the broker's certificate")
    g.add_argument("--cert", metavar="FILE", help="client certificate (mutual TLS)")
    g.add_argument("--client-key", metavar="FILE", help="client certificate's key")
    g.add_argument("--username", metavar="NAME")
    g.add_argument("--password-file", metavar="FILE", help="first line is the password")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="default 10")


def _common(p: argparse.ArgumentParser) -> None:
    from ota.protocol import DEFAULT_PREFIX

    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")


def _manifest(p: argparse.ArgumentParser, *, required_url: bool) -> None:
    p.add_argument(
        "--manifest-url", required=required_url, metavar="URL", help="the bundle's manifest.json URL"
    )
    p.add_argument("--manifest-sha256", metavar="HEX", help="sha256 of the manifest.json bytes")
    p.add_argument(
        "--manifest", metavar="FILE", help="a local copy of manifest.json: its sha256 and release_counter"
    )
    p.add_argument("--release-counter", type=int, metavar="N", help="announce this release counter")
    p.add_argument("--expires", default="24h", metavar="DUR", help="job lifetime (default 24h)")
    p.add_argument("--job-id", metavar="ID", help="job id (default: generated)")


def register(subparsers: SubParsers) -> None:
    """The top-level ``fleet`` group: ``job``, ``deploy``, ``status``, ``rollback``, ``sampling``,
    ``capture``."""
    fleet = subparsers.add_parser("fleet", help="sign jobs, roll out updates and watch devices over MQTT")
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    p = fsub.add_parser(
        "job",
        help="print a signed job (for mosquitto_pub); no broker needed",
        description="Sign a job and print it on one line; publish it to the device's (or group's) "
        "notify topic, QoS 1.",
    )
    _target(p)
    p.add_argument("--action", choices=("deploy", "rollback", "pin", "sampling", "capture"), default="deploy")
    _manifest(p, required_url=False)
    p.add_argument("--version", type=int, metavar="N", help="pin: the version (default: the one serving)")
    p.add_argument("--policy", metavar="FILE", help="sampling: TOML with a [sampling] table, or its JSON")
    p.add_argument("--frames", type=int, metavar="N", help="capture: how many of the next frames to keep")
    p.add_argument("--key", required=True, metavar="KEY", help="fleet private key (.key, mode 0600)")
    _common(p)
    p.set_defaults(func=cmd_job)

    p = fsub.add_parser(
        "deploy",
        help="roll a bundle out to devices or a group, in waves; exit 0 when every device SUCCEEDED",
        description="Send a signed deploy job to each device as its wave comes; the next wave starts "
        "once --success-pct of the previous one SUCCEEDED. Abort when --abort-failed-pct of the "
        "executed devices failed (after --min-executed), optionally rolling back the updated ones.",
    )
    _target(p)
    _manifest(p, required_url=True)
    p.add_argument("--key", required=True, metavar="KEY", help="fleet private key (.key, mode 0600)")
    r = p.add_argument_group("rollout")
    r.add_argument("--waves", metavar="LIST", help="cumulative wave sizes, e.g. 1,10%%,50%%,100%%")
    r.add_argument("--rate", metavar="N/min", help="at most N devices per minute (also N/s, N/h)")
    r.add_argument("--success-pct", type=float, default=100.0, metavar="P", help="default 100")
    r.add_argument("--abort-failed-pct", type=float, metavar="P", help="abort when P%% of executed failed")
    r.add_argument("--min-executed", type=int, metavar="N", help="judge the abort rule from N executed on")
    r.add_argument("--rollback-on-abort", action="store_true", help="roll back the updated devices on abort")
    r.add_argument("--wave-timeout", metavar="DUR", help="abort when a wave has not passed in DUR")
    r.add_argument("--timeout", metavar="DUR", help="give up waiting after DUR (exit 1)")
    r.add_argument("--journal", metavar="FILE", help="rollout journal (default <state>/fleet/JOB.jsonl)")
    _broker(p)
    _common(p)
    p.set_defaults(func=cmd_deploy)

    p = fsub.add_parser("status", help="the devices: online, model, version, latest job status")
    p.add_argument("--group", metavar="G", help="only this group's devices")
    p.add_argument("--watch", action="store_true", help="redraw on every change until Ctrl-C")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument(
        "--window", type=float, default=1.0, metavar="S", help="listen S seconds for job statuses (default 1)"
    )
    _broker(p)
    _common(p)
    p.set_defaults(func=cmd_status)

    p = fsub.add_parser("rollback", help="ask devices (or a group) to go back to their previous version")
    _target(p)
    p.add_argument("--key", required=True, metavar="KEY", help="fleet private key (.key, mode 0600)")
    p.add_argument("--job-id", metavar="ID", help="job id (default: generated)")
    _broker(p)
    _common(p)
    p.set_defaults(func=cmd_rollback)

    for name, func, what in (
        ("sampling", cmd_sampling, "set the sampling policy of devices (or a group): which frames they keep"),
        ("capture", cmd_capture, "ask devices (or a group) to keep their next N frames"),
    ):
        p = fsub.add_parser(
            name,
            help=what,
            description=f"{what[0].upper()}{what[1:]}. With --wait S, wait for the statuses and exit 0 "
            "when every device SUCCEEDED, 1 otherwise.",
        )
        _target(p)
        if name == "sampling":
            p.add_argument(
                "--policy",
                required=True,
                metavar="FILE",
                help="TOML with a [sampling] table, or the table as JSON",
            )
        else:
            p.add_argument("--frames", required=True, type=int, metavar="N", help="frames to keep, 1-1000")
        p.add_argument("--key", required=True, metavar="KEY", help="fleet private key (.key, mode 0600)")
        p.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the statuses")
        p.add_argument("--expires", default="24h", metavar="DUR", help="job lifetime (default 24h)")
        p.add_argument("--job-id", metavar="ID", help="job id (default: generated)")
        _broker(p)
        _common(p)
        p.set_defaults(func=func)


__all__ = [
    "cmd_capture",
    "cmd_deploy",
    "cmd_job",
    "cmd_rollback",
    "cmd_sampling",
    "cmd_status",
    "fetch_manifest",
    "manifest_facts",
    "parse_duration",
    "parse_rate",
    "read_policy",
    "register",
    "status_rows",
]
