"""``edge-agent run``: the wiring of one agent process.

Start-up order (each step must succeed before the next; a failure here means the agent can
serve nothing, and ``start`` raises ``EdgeAgentError`` for an exit code of 1):

1. logging, state folder, sd_notify (``STATUS=`` lines; watchdog pings start at once, since
   ``TimeoutStartSec=`` guards the start-up);
2. the first model (zoo name, bundle folder or bare model file);
3. the source (opened here, so a camera that is missing is reported before anything runs);
4. sinks: the results JSON lines (``--results``) and ``<state>/metrics.db``;
5. the pipeline, then the services beside it (the model manager's worker, the drop-folder
   watcher, the fleet channel over MQTT, the control API): a configured service that cannot
   start fails the start here, before ``READY=1``, so systemd restarts with back-off
   instead of running half an agent;
6. ``READY=1``; the watchdog switches to the inference loop's heartbeat, which also goes
   stale while no model can be loaded (``ModelManager.healthy``), so systemd restarts.

The state root (``--state-dir``, or ``$STATE_DIRECTORY`` under systemd) holds the model
store and everything else of DESIGN §4; the store and its updates are on when the state root
was given (flag, config or systemd), or with the deprecated ``--models-dir``.

Then ``serve`` runs the inference loop on the main thread until the source ends,
``max_frames`` is reached, or SIGTERM/SIGINT (finish the frame, flush, exit 0). SIGHUP
re-reads the config file and applies what can change live (log level, results, max
frames); it logs what needs a restart. ``services`` holds extra components started after
the pipeline and stopped before it ends (the model manager, watchers, control API).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from agent import __version__
from agent.config import LIVE_KEYS, Config, apply_overrides, changed_keys, load_config
from agent.control import default_address, ensure_token, parse_address
from agent.controller import ControlService, DaemonController
from agent.handle import ModelHandle
from agent.manager import ManagerPolicy, ModelManager
from agent.notify import Notifier, Watchdog, watchdog_timeout
from agent.paths import default_state_dir
from agent.pipeline import Pipeline, PipelineStats
from agent.progress import Every, LiveLine, Progress, ProgressLogHandler, format_line
from agent.sinks import JsonlSink, Sink, SqliteSink
from agent.source import Source, open_source
from inference.errors import BundleError, ConfigError, EdgeAgentError
from inference.runtime import RuntimeOptions
from monitoring.drift_monitor import DriftMonitor, MonitorSettings, Span
from monitoring.job_history import JobHistory
from monitoring.metrics_store import MetricsStore
from ota.downloader import DownloadPolicy
from ota.drop_folder import DropFolderWatcher
from ota.remote_bundle import RemoteBundleFetcher
from ota.store import ModelStore
from ota.trust import TrustStore, trust_dir, verify_bundle_signature
from ota.update_events import UpdateEvents
from ota.update_machine import UpdateMachine
from ota.update_window import UpdateWindow

if TYPE_CHECKING:
    from inference.model import LoadedModel

log = logging.getLogger("agent")

STATUS_EVERY_S = 10.0


class Service(Protocol):
    """A component that runs beside the pipeline (started after it is built, stopped first)."""

    def start(self) -> object: ...  # (a Periodic returns itself)

    def stop(self) -> None: ...


def setup_logging(level: str, stream: TextIO, line: LiveLine | None = None) -> logging.Handler:
    """Root logging to ``stream``; without timestamps under journald (it adds its own)."""
    handler: logging.Handler = ProgressLogHandler(line) if line is not None else logging.StreamHandler(stream)
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else None
    handler.setFormatter(
        logging.Formatter(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_edge_agent", False):
            root.removeHandler(old)
    handler._edge_agent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def resolve_model(spec: str) -> Path:
    """A model spec (bundle folder, model file, or zoo name) as a path to load."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from inference import zoo

    if spec in zoo.MODEL_NAMES:
        return zoo.model_path(spec)  # fetched (and its bundle built) on first use
    raise BundleError(
        f"model {spec!r}: no such file or folder, and not a zoo model ({', '.join(zoo.MODEL_NAMES)}); "
        "give a bundle folder, a .onnx/.tflite file or a zoo name"
    )


def demo_defaults(config: Config) -> tuple[Config, bool]:
    """Fill in the demo: the default zoo model and the demo source that suits it.

    Returns the config and whether this is the demo (no model and no source given)."""
    from agent.demo_source import demo_for_model
    from inference import zoo

    demo = config.model is None and config.source is None
    if config.model is None and not (config.models_dir is not None and config.source is not None):
        config = config.replace(model=zoo.DEFAULT_MODEL)
    if config.source is None:
        assert config.model is not None
        if config.model not in zoo.NAMES:
            raise ConfigError(
                f"no source given for model {config.model}: use --source (or source = ... in the config), "
                "e.g. /dev/video0, a video file, an image folder or synthetic:640x480@30"
            )
        config = config.replace(source=demo_for_model(config.model))
    return config, demo


class Daemon:
    """One agent process (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        demo: bool = False,
        env: Mapping[str, str] | None = None,
        stderr: TextIO | None = None,
        progress: bool | None = None,
        notifier: Notifier | None = None,
        manager_hooks: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.demo = demo
        self.env = os.environ if env is None else env
        self.stderr = stderr or sys.stderr
        tty = self.stderr.isatty() if progress is None else progress
        self.line = LiveLine(self.stderr) if tty else None
        self.notifier = notifier or Notifier.from_env()
        self.manager_hooks = dict(manager_hooks or {})  # fault points (ModelManager's ``faults``)
        self.fleet: Any = None  # the FleetChannel when [mqtt] url is set
        self.outbox: Any = None  # its outbox, taking job statuses from before the boot
        self.state_dir = config.state_dir or default_state_dir(self.env)
        self.trust = TrustStore(trust_dir(self.state_dir))  # fleet keys: signed jobs and bundles
        self.handle: ModelHandle | None = None
        self.manager: ModelManager | None = None
        self.source: Source | None = None
        self.pipeline: Pipeline | None = None
        self.store: MetricsStore | None = None
        self.results_sink: JsonlSink | None = None
        self.monitor: DriftMonitor | None = None  # drift and decay ([monitoring])
        self.collection: Any = None  # agent.collection.Collection: sampling, spool, upload
        self.metrics_server: Any = None  # Prometheus /metrics ([monitoring] metrics)
        self.update_outcomes: dict[
            str, int
        ] = {}  # jobs ended, by outcome, for /metrics (replaced, not changed)
        self._outcomes_lock = threading.Lock()
        self.sinks: list[Sink] = []
        self.services: list[Service] = []
        self.started: list[Service] = []
        self.watchdog: Watchdog | None = None
        self.progress: Progress | None = None
        self._signals = 0
        self._log_handler: logging.Handler | None = None

    # ------------------------------------------------------------------ start-up

    def status(self, text: str) -> None:
        self.notifier.status(text)

    def start(self) -> None:
        """Steps 1-5 of the module docstring. Raises ``EdgeAgentError`` when nothing can be served."""
        cfg = self.config
        self._log_handler = setup_logging(cfg.log_level, self.stderr, self.line)
        timeout = watchdog_timeout(self.env)
        if self.notifier.enabled and timeout:
            self.watchdog = Watchdog(self.notifier, timeout, time.monotonic).start()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the state folder {self.state_dir}: {err.strerror}; "
                "use --state-dir or fix its permissions"
            ) from None
        assert cfg.source is not None
        self._open_metrics()
        store_root = self._store_root()
        if cfg.mqtt.url and store_root is None:
            raise ConfigError(
                "MQTT updates need the model store: give --state-dir (or run under systemd with "
                "StateDirectory=) so the agent can keep versions and resume jobs"
            )
        if store_root is not None:
            self.status(f"opening the model store {store_root}")
            self.manager = self._make_manager(store_root)
            model = self.manager.boot(seed=resolve_model(cfg.model) if cfg.model else None)
        else:
            assert cfg.model is not None
            self.status(f"loading model {cfg.model}")
            model = self._load_model(cfg.model)
        self.handle = ModelHandle(model)
        log.info("model %s v%s loaded (sha256 %s)", model.name, model.version, model.sha256[:12])
        self.status(f"opening source {cfg.source}")
        self.source = open_source(cfg.source, loop=cfg.loop)
        self.source.open()
        log.info("source %s open (%s)", cfg.source, "live" if self.source.live else "lossless")
        self.sinks = self._make_sinks()
        if cfg.monitoring.enabled:
            self.monitor = self._make_monitor()
            self.sinks.append(self.monitor)
        if cfg.collecting:
            self.collection = self._make_collection()
            self.sinks.append(self.collection.collector)
        if self.manager is not None:
            self.sinks.append(self.manager)  # probation health and the recent frames for validation
        self.pipeline = Pipeline(
            self.source,
            self.handle,
            self.sinks,
            max_frames=cfg.max_frames,
            idle_tick=min(0.5, timeout / 4) if timeout else 0.5,
        )
        if self.manager is not None:
            self.pipeline.on_error = self.manager.on_error
            self.manager.attach(self.handle, self.pipeline.call_between_frames)
            self.services.append(self.manager)
            self.services.append(
                DropFolderWatcher(self.manager.store.incoming_dir, self.manager.on_candidate)
            )
            if cfg.mqtt.url:
                from agent.fleet_channel import FleetChannel

                self.fleet = FleetChannel(
                    cfg.mqtt,
                    state_dir=self.state_dir,
                    manager=self.manager,
                    pipeline=self.pipeline,
                    trust=self.trust,
                    outbox=self.outbox,
                )
                self.services.append(self.fleet)
                if self.monitor is not None:
                    self.fleet.attach_monitor(self.monitor)
                if self.collection is not None:
                    self.fleet.attach_sampling(self.collection.collector)
                    self.fleet.attach_spool_counters(self.collection.telemetry)
                if cfg.mqtt.events_per_min > 0:
                    self.pipeline.sinks = [*self.pipeline.sinks, self.fleet]
        if self.store is not None:
            from agent.housekeeping import Housekeeping

            self.services.append(Housekeeping(self.store))
        if cfg.monitoring.metrics:
            from agent.metrics_exporter import metrics_server

            self.metrics_server = metrics_server(self)
            self.services.append(self.metrics_server)
        control = cfg.control or (default_address(self.state_dir) if self.manager is not None else None)
        if control and control != "off":
            controller = DaemonController(self.pipeline, self.handle, self.manager)
            controller.fleet = self.fleet
            controller.monitor = self.monitor
            controller.collection = self.collection
            token = None if isinstance(parse_address(control), Path) else ensure_token(self.state_dir)
            self.services.append(ControlService(control, controller, token))
        if self.collection is not None:  # stopped before the uploader: what is queued is spooled
            self.services.extend(self.collection.services)
        if self.monitor is not None:  # stopped first: its last windows still reach the fleet's outbox
            self.services.append(self.monitor)
        self._start_services()
        if self.store is not None:
            self.store.add_event(
                "start",
                {"model": model.name, "version": model.version, "sha256": model.sha256, "source": cfg.source},
            )

    def _store_root(self) -> Path | None:
        """Where the model store lives, or None to run the one model without a store."""
        cfg = self.config
        if cfg.models_dir is not None:
            log.warning(
                "--models-dir (models_dir) is deprecated and goes away in the next release: the "
                "model store lives in the state root; use --state-dir %s",
                cfg.models_dir,
            )
            if (
                cfg.state_dir is not None
                and Path(cfg.state_dir).absolute() != Path(cfg.models_dir).absolute()
            ):
                raise ConfigError(
                    f"--models-dir {cfg.models_dir} and --state-dir {cfg.state_dir} differ: the model "
                    "store lives in the state root; give --state-dir alone"
                )
            return Path(cfg.models_dir)
        if cfg.state_dir is not None or self.env.get("STATE_DIRECTORY"):
            return self.state_dir
        return None

    def _start_services(self) -> None:
        """Start the services in order; one that cannot start fails the start (see step 5)."""
        for service in self.services:
            service.start()
            self.started.append(service)

    def _stop_services(self) -> None:
        for service in reversed(self.started):
            try:
                service.stop()
            except EdgeAgentError as err:
                log.warning("stopping %s: %s", type(service).__name__, err)
            except Exception:  # a bug in one service must not leave the others (and the outbox) running
                log.exception("stopping %s failed; stopping the others", type(service).__name__)
        self.started = []

    def _heartbeat(self) -> float:
        """The pipeline's heartbeat, or "never" while no model can be loaded (the watchdog stops)."""
        assert self.pipeline is not None
        if self.manager is not None and self.manager.healthy() is not None:
            return float("-inf")
        return self.pipeline.heartbeat

    def _configure_bare(self, bundle: Any) -> Any:
        """A bare model file the store imports, configured from its exporter metadata at our input size."""
        from inference.model import bare_manifest

        return bare_manifest(bundle, input_size=self.config.input_size)

    def _load_model(self, spec: str) -> LoadedModel:
        from inference.model import load_model

        options = RuntimeOptions(
            threads=self.config.threads, providers=self.config.providers, cache_dir=self.state_dir / "cache"
        )
        runtime = None if self.config.runtime == "auto" else self.config.runtime
        return load_model(resolve_model(spec), options, runtime=runtime, input_size=self.config.input_size)

    def _open_metrics(self) -> None:
        m = self.config.monitoring
        try:
            self.store = MetricsStore(
                self.state_dir / "metrics.db",
                max_age_days=m.retention_days,
                max_bytes=int(m.max_db_mb * 1024 * 1024),
            )
        except EdgeAgentError as err:  # metrics are not worth refusing to serve
            log.error("%s; running without the metrics database", err)

    def _require_signed(self) -> bool:
        """Whether bundles must be signed: ``auto`` when trust/ holds keys (read at each use)."""
        mode = self.config.updates.require_signed
        return mode == "always" or (mode == "auto" and not self.trust.empty)

    def _check_signature(self, bundle_dir: Path) -> None:
        self.trust.reload()
        if self._require_signed():
            key = verify_bundle_signature(bundle_dir, self.trust)
            log.info("bundle %s signed by key %s", bundle_dir.name, key)

    def _make_manager(self, root: Path) -> ModelManager:
        cfg = self.config
        store = ModelStore(root, configure_bare=self._configure_bare)
        from inference.runtime import RUNTIMES

        fetcher = RemoteBundleFetcher(
            self.trust,
            require_signed=cfg.updates.require_signed != "never",
            agent_version=__version__,
            runtimes=tuple(RUNTIMES),
            policy=DownloadPolicy(start_jitter_s=cfg.updates.download_jitter_s),
        )
        machine = UpdateMachine(store.state_path)
        p = cfg.probation
        policy = ManagerPolicy(
            swap_policy=cfg.swap_policy,
            probation_frames=p.frames,
            probation_seconds=p.seconds,
            probation_max_seconds=p.max_seconds,
            on_thin_evidence=p.on_thin_evidence,
            max_error_rate=p.max_error_rate,
            min_confidence_ratio=p.min_confidence_ratio,
            allow_downgrade=cfg.allow_downgrade,
        )
        events = UpdateEvents()
        events.subscribe(self._count_outcome)
        if self.store is not None:
            events.subscribe(JobHistory(self.store))
        if cfg.mqtt.url:  # before boot: what a restart finishes or undoes is reported to the fleet
            from agent.fleet_channel import status_outbox

            self.outbox = status_outbox(cfg.mqtt, self.state_dir, events)
        options = RuntimeOptions(
            threads=cfg.threads, providers=cfg.providers, cache_dir=self.state_dir / "cache"
        )
        runtime = None if cfg.runtime == "auto" else cfg.runtime
        return ModelManager(
            store,
            machine,
            options=options,
            runtime=runtime,
            policy=policy,
            events=events,
            fetcher=fetcher,
            bundle_check=self._check_signature,
            window=UpdateWindow.parse(cfg.updates.window) if cfg.updates.window else None,
            **self._sized(self.manager_hooks, cfg.input_size),
        )

    @staticmethod
    def _sized(hooks: dict[str, Any], size: tuple[int, int] | None) -> dict[str, Any]:
        """The manager's hooks with its model loader given ``input_size`` (every version it loads)."""
        if size is None:
            return hooks
        from inference.model import load_model

        return {**hooks, "loader": functools.partial(hooks.get("loader", load_model), input_size=size)}

    def _count_outcome(self, event: Any) -> None:
        """Jobs ended, by outcome (``/metrics``); steps and queueing are not outcomes."""
        status = getattr(event.status, "value", str(event.status))
        if status in ("SUCCEEDED", "FAILED", "REJECTED"):
            with self._outcomes_lock:  # events come from the manager's and the MQTT threads
                self.update_outcomes = {
                    **self.update_outcomes,
                    status: self.update_outcomes.get(status, 0) + 1,
                }

    def _make_monitor(self) -> DriftMonitor:
        m = self.config.monitoring
        settings = MonitorSettings(
            sample_every=Span.parse(m.sample_every, "[monitoring] sample_every"),
            window=Span.parse(m.window, "[monitoring] window"),
            alert_after=m.alert_after,
            clear_after=m.clear_after,
            learn=Span.parse(m.learn, "[monitoring] learn"),
            per_frame=m.per_frame,
        )
        assert self.source is not None
        return DriftMonitor(self.store, settings, lossless=not self.source.live)

    def _make_collection(self) -> Any:
        from agent.collection import Collection
        from agent.fleet_channel import default_device_id

        monitor = self.monitor
        drifted = None
        if monitor is not None:

            def drifted() -> bool:  # the last judged window drifted (read, never changed here)
                last = monitor.last
                return last is not None and last.verdict is not None and bool(last.verdict.drifted)

        assert self.source is not None
        collection = Collection.build(
            self.config,
            self.state_dir,
            device=self.config.mqtt.device_id or default_device_id(),
            lossless=not self.source.live,
            drifted=drifted,
        )
        if monitor is not None:  # an alert names the frames kept while it built up
            monitor.collected_frames = collection.collector.collected_frames
        return collection

    def _make_sinks(self) -> list[Sink]:
        sinks: list[Sink] = []
        if self.config.results:
            self.results_sink = JsonlSink(self.config.results)
            sinks.append(self.results_sink)
        if self.store is not None and self.config.monitoring.per_frame == "all":
            sinks.append(SqliteSink(self.store))  # every frame's row: opt-in (30 fps is 2.6 M rows a day)
        return sinks

    # ------------------------------------------------------------------ signals and reload

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"edge-agent: second stop signal, exiting now\n")
            os._exit(1)
        if self.pipeline is not None:
            self.pipeline.request_stop()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        if self.pipeline is not None:
            self.pipeline.call_between_results(self.reload)

    def reload(self) -> None:
        """Re-read the config file; apply the live keys, log the ones that need a restart."""
        if self.config_path is None:
            log.warning("SIGHUP: no config file was given (--config), nothing to reload")
            return
        try:
            new = apply_overrides(load_config(self.config_path), self.overrides, "command line")
        except ConfigError as err:
            log.error("SIGHUP: %s; keeping the running config", err)
            return
        old = self.config
        changed = changed_keys(old, new)
        if not changed:
            log.info("SIGHUP: %s reloaded, nothing changed", self.config_path)
            return
        applied: dict[str, Any] = {}
        for key in changed:
            if key not in LIVE_KEYS:
                log.warning(
                    "SIGHUP: %s changed; restart the agent to apply it (systemctl restart edge-agent)", key
                )
                continue
            if key == "log_level":
                logging.getLogger().setLevel(new.log_level.upper())
            elif key == "max_frames" and self.pipeline is not None:
                self.pipeline.max_frames = new.max_frames
            elif key == "results" and not self._swap_results(new.results):
                continue
            applied[key] = getattr(new, key)
        self.config = old.replace(**applied)
        log.info("SIGHUP: applied %s", ", ".join(f"{k}={v!r}" for k, v in applied.items()) or "nothing")
        if self.store is not None:
            self.store.add_event(
                "reload", {"applied": applied, "needs_restart": sorted(set(changed) - set(applied))}
            )

    def _swap_results(self, target: str | None) -> bool:
        """Replace the results sink (runs on the results thread, between two results)."""
        try:
            new = JsonlSink(target) if target else None
        except EdgeAgentError as err:
            log.error("SIGHUP: %s; keeping the current results output", err)
            return False
        old = self.results_sink
        sinks = [s for s in self.sinks if s is not old]
        if new is not None:
            sinks.insert(0, new)
        self.sinks = sinks
        self.results_sink = new
        if self.pipeline is not None:
            self.pipeline.sinks = sinks
        if old is not None:
            old.close()
        return True

    # ------------------------------------------------------------------ serving

    def _status_hook(self, s: PipelineStats) -> None:
        self.notifier.status(format_line(s))

    def serve(self) -> PipelineStats:
        """Run the inference loop on this (main) thread until it ends; then clean up."""
        assert self.pipeline is not None and self.handle is not None
        pipeline = self.pipeline
        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig, fn in (
                (signal.SIGTERM, self._on_signal),
                (signal.SIGINT, self._on_signal),
                (signal.SIGHUP, self._on_hup),
            ):
                installed[sig] = signal.signal(sig, fn)
        model = self.handle.current
        hooks: list[Callable[[PipelineStats], None]] = []
        if self.notifier.enabled:
            hooks.append(Every(STATUS_EVERY_S, self._status_hook))
        self.progress = Progress(
            pipeline.stats, line=self.line, log_every=5.0 if self.demo else 60.0, hooks=hooks
        ).start()
        if self.watchdog is not None:
            self.watchdog.heartbeat = self._heartbeat
        self.notifier.ready(f"serving {model.name} v{model.version} on {self.config.source}")
        try:
            stats = pipeline.run()
        finally:
            self.notifier.stopping("stopping")
            self._stop_services()
            self.progress.stop()
            for sig, old in installed.items():
                signal.signal(sig, old)
            self.close(pipeline.stats())
        return stats

    def close(self, stats: PipelineStats | None = None) -> None:
        self._stop_services()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:
                log.warning("closing sink %s failed: %s", type(sink).__name__, err)
        if self.store is not None:
            if stats is not None:
                try:
                    self.store.add_event("stop", stats.to_dict())
                except EdgeAgentError as err:
                    log.warning("%s", err)
            self.store.close()
            self.store = None
        if self.collection is not None:
            self.collection.close()
            self.collection = None
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.handle is not None:
            try:
                self.handle.current.close()
            except Exception as err:
                log.debug("closing the model failed: %s", err)
        self.notifier.close()


def run(
    config: Config,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    stderr: TextIO | None = None,
    progress: bool | None = None,
) -> int:
    """``edge-agent run``: 0 after a normal end or a stop signal, 1 when nothing can be served
    at start, 2 for a config error. Messages go to the log (stderr)."""
    stderr = stderr or sys.stderr
    try:
        config, demo = demo_defaults(config)
    except ConfigError as err:
        print(f"edge-agent: error: {err}", file=stderr)
        return 2
    daemon = Daemon(
        config, config_path=config_path, overrides=overrides, demo=demo, stderr=stderr, progress=progress
    )
    try:
        if demo:
            print(
                f"edge-agent: no --model/--source given: running the demo "
                f"({config.model} on {config.source}); Ctrl-C to stop",
                file=stderr,
            )
        daemon.start()
    except ConfigError as err:
        log.error("%s", err)
        daemon.notifier.stopping(f"config error: {err}")
        daemon.close()
        return 2
    except EdgeAgentError as err:
        log.error("cannot start: %s", err)
        daemon.notifier.stopping(f"cannot start: {err}")
        daemon.close()
        return 1
    stats = daemon.serve()
    log.info(
        "done: %d frames, %d dropped, %d errors, %.1f fps, p50 %.1f ms, p95 %.1f ms",
        stats.frames,
        stats.dropped,
        stats.errors,
        stats.fps,
        stats.latency_p50_ms,
        stats.latency_p95_ms,
    )
    pipeline = daemon.pipeline
    if pipeline is not None and (pipeline.capture_error is not None or pipeline.results_error is not None):
        return 1  # a bug ended the run: let systemd restart it (Restart=on-failure)
    return 0
