"""The benchmark runner: ``python -m benchmarks [--quick] [--only NAME ...] [--no-docs]``.

Runs every benchmark module in this package that exposes ``run(quick: bool) -> dict`` (known
ones in ``ORDER`` first, then any other in name order), then writes

- ``benchmarks/results/<machine>-<date>.json``: machine, command, git revision, every result
  (with ``--only``: ``<names>-<machine>-<date>[-N].json``, numbered so a run keeps the earlier ones);
- ``benchmarks/results/<machine>-<date>.md``: the table against DESIGN §9 and the figures;
- ``benchmarks/results/<machine>-<date>-<benchmark>.png``: latency distributions;
- the generated part of ``docs/performance.md`` (full runs only: not with ``--quick``,
  ``--only`` or ``--no-docs``, nor with another ``--out``).

A benchmark that raises is recorded with its error and the others still run; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import shlex
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    git_revision,
    machine_info,
    result_stem,
    summarize,
    write_json,
    write_text,
)

ORDER = ("pipeline", "bench_vs_plain", "hot_swap", "ota", "monitoring", "collection", "upload")
NOT_BENCHMARKS = {"common", "__main__"}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN, END = "<!-- results:begin (written by python -m benchmarks) -->", "<!-- results:end -->"


def discover() -> dict[str, ModuleType]:
    """Benchmark modules with a ``run`` function: ``ORDER`` first, then the rest by name."""
    import benchmarks

    names = [m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in NOT_BENCHMARKS]
    ordered = [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)
    found: dict[str, ModuleType] = {}
    for name in ordered:
        module = importlib.import_module(f"benchmarks.{name}")
        if callable(getattr(module, "run", None)):
            found[name] = module
    return found


def run_all(
    modules: dict[str, ModuleType], quick: bool
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Run each benchmark; returns (results by name, latency samples by name)."""
    results: dict[str, Any] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for name, module in modules.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            res = dict(module.run(quick))
        except Exception as exc:
            traceback.print_exc()
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        lat = res.pop("latency_ms", None)
        if isinstance(lat, dict) and lat:
            samples[name] = {str(k): [float(x) for x in v] for k, v in lat.items() if len(v)}
            res["latency_ms"] = {
                k: {m: round(x, 4) for m, x in summarize(v).items()} for k, v in samples[name].items()
            }
        for t in res.get("targets", []):
            mark = {True: "ok", False: "MISSED", None: "-"}[t.get("ok")]
            print(
                f"   {t['what']}: {_num(t['value'])}{_spread(t)} (target {t['target']}) {mark}",
                file=sys.stderr,
            )
        results[name] = res
    return results, samples


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _spread(target: dict[str, Any]) -> str:
    """`` (range 0.951-1.020)`` for a target that gives the spread of its per-round figures."""
    spread = target.get("spread")
    if not spread:
        return ""
    return f" (range {_num(spread[0])}-{_num(spread[1])})"


def plot(samples: dict[str, list[float]], title: str, path: Path) -> Path:
    """Latency distributions: a histogram (log-spaced bins) and the empirical CDF per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    all_v = np.concatenate([np.asarray(v, dtype=np.float64) for v in samples.values()])
    lo, hi = max(float(all_v.min()), 1e-3), max(float(all_v.max()), 1e-3 * 1.01)
    bins = np.geomspace(lo, hi * 1.0001, 60)
    for label, values in samples.items():
        a = np.sort(np.asarray(values, dtype=np.float64))
        ax_h.hist(a, bins=bins, histtype="step", linewidth=1.4, label=f"{label} (n={a.size})")
        ax_c.plot(a, np.arange(1, a.size + 1) / a.size, linewidth=1.4, label=label)
        p50 = float(np.percentile(a, 50))
        ax_c.axvline(p50, linestyle=":", linewidth=0.8, color=ax_c.lines[-1].get_color())
    for ax in (ax_h, ax_c):
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    ax_h.set_ylabel("runs")
    ax_c.set_ylabel("fraction of runs ≤ x (dotted: p50)")
    ax_h.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(doc: dict[str, Any], plots: dict[str, str]) -> str:
    """The results as markdown: the §9 targets table, then each benchmark's latencies and notes."""
    m = doc["machine"]
    load = doc.get("load_average") or {}
    lines = [
        f"Measured {doc['date']} on {m['cpu']} ({m['arch']}, {m['cores']} cores, "
        f"{m.get('memory_mb') or '?'} MB), {m['os']}, Python {m['python']}, numpy {m['numpy']}; "
        f"git {doc.get('git') or '?'}{' (quick run)' if doc['quick'] else ''}. "
        f"1-minute load average {load.get('start')} at the start, {load.get('end')} at the end "
        f"(anything above 0 is other work sharing the CPUs).",
        "",
        f"Command: `{doc['command']}`",
        "",
        "| benchmark | what | measured | target | |",
        "|---|---|---|---|---|",
    ]
    for name, res in doc["benchmarks"].items():
        if "error" in res:
            lines.append(f"| {name} | failed: {res['error']} | | | ✗ |")
        for t in res.get("targets", []):
            mark = {True: "✓", False: "✗", None: ""}[t.get("ok")]
            lines.append(
                f"| {name} | {t['what']} | {_num(t['value'])}{_spread(t)} | {t['target']} | {mark} |"
            )
    for name, res in doc["benchmarks"].items():
        lat = res.get("latency_ms")
        notes = res.get("notes") or []
        if not lat and not notes:
            continue
        lines += ["", f"### {name}", ""]
        if lat:
            lines += ["| latency (ms) | n | mean | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
            for label, s in lat.items():
                n = len(doc["_samples"].get(name, {}).get(label, []))
                lines.append(
                    f"| {label} | {n} | {s['mean']:.3f} | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} | "
                    f"{s['max']:.3f} |"
                )
        for note in notes:
            lines += ["", f"- {note}"]
        if name in plots:
            lines += ["", f"![{name} latency distributions]({plots[name]})"]
    return "\n".join(lines) + "\n"


def update_docs(md: str, results_rel_to_docs: str, docs: Path | None = None) -> None:
    """Replace the generated block of docs/performance.md with ``md`` (image links re-rooted)."""
    docs = docs or DOCS
    text = docs.read_text(encoding="utf-8") if docs.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    body = md.replace("](results/", f"]({results_rel_to_docs}/")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_text(docs, f"{head}{BEGIN}\n\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="fewer runs and rounds (a smoke run)")
    ap.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this benchmark (repeatable)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default: {RESULTS_DIR})")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    modules = discover()
    if args.list:
        for name, module in modules.items():
            print(f"{name}: {(module.__doc__ or '').strip().splitlines()[0]}")
        return 0
    unknown = [n for n in args.only if n not in modules]
    if unknown:
        print(
            f"python -m benchmarks: unknown benchmark {', '.join(unknown)}; have {', '.join(modules)}",
            file=sys.stderr,
        )
        return 2
    if args.only:
        modules = {n: m for n, m in modules.items() if n in args.only}
    info = machine_info()
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python -m benchmarks" + (" " + shlex.join(given) if given else "")
    today = dt.date.today()
    load_start = _loadavg()
    results, samples = run_all(modules, args.quick)
    doc: dict[str, Any] = {
        "date": today.isoformat(),
        "machine": info,
        "git": git_revision(),
        "command": command,
        "quick": args.quick,
        "load_average": {"start": load_start, "end": _loadavg()},  # 1-minute: others sharing the CPUs
        "benchmarks": results,
    }
    if "bench_vs_plain" in results.get("bench_vs_plain", {}):
        doc["bench_vs_plain"] = results["bench_vs_plain"]["bench_vs_plain"]
    stem = result_stem(today, info)
    if args.only:  # a partial run: named after what ran, and never over another run's files
        stem = "-".join([*args.only, stem])
        n = 1
        while (args.out / f"{stem}{f'-{n}' if n > 1 else ''}.json").exists():
            n += 1
        stem += f"-{n}" if n > 1 else ""
    out: Path = args.out
    plots: dict[str, str] = {}
    for name, by_label in samples.items():
        png = plot(by_label, f"{name} — {info['cpu']}, {info['cores']} cores", out / f"{stem}-{name}.png")
        plots[name] = f"results/{png.name}"
    write_json(out / f"{stem}.json", doc)
    md = markdown({**doc, "_samples": samples}, plots)
    write_text(out / f"{stem}.md", f"# Benchmarks {stem}\n\n" + md.replace("](results/", "]("))
    if not (args.only or args.quick or args.no_docs) and out.resolve() == RESULTS_DIR.resolve():
        update_docs(md, "../benchmarks/results")
    print(out / f"{stem}.json")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
