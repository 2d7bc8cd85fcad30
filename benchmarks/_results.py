"""Where every benchmark script writes what it measured: results/<name>.json (the figures) and results/<name>.md
(the report, with the command and machine), the report also printed."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def save_results(name: str, results: dict, report: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(report)
    print(report)
