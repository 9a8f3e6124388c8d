"""The performance suite: ``python -m benchmarks [--quick] [--only NAME]``.

Each benchmark is a module here exposing ``run(quick: bool) -> dict``; the runner
(``benchmarks/__main__.py``) finds every module that has ``run`` and writes
``benchmarks/results/<machine>-<date>.json``, a markdown table beside it and PNG plots.

What ``run`` returns is free-form JSON, with three keys the runner understands:

- ``"targets"``: rows for the table against DESIGN §9, each
  ``{"what": str, "value": float, "target": str, "ok": bool | None}``;
- ``"latency_ms"``: ``{label: [samples in ms, ...]}`` to draw as latency distributions
  (the runner plots them and keeps only their summaries in the JSON);
- ``"notes"``: a list of strings shown under the table.
"""
