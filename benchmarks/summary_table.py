"""One markdown summary table from finished run folders (e.g. CORE and its ablations).

    python benchmarks/summary_table.py core=runs/cmp/core "no calibration=runs/ablate/no_calibration" ...

Each argument is LABEL=RUN_DIR; the table is the one `vlforget compare` writes
(`markdown_summary`), with the label in the method column.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlforget.evaluation.report import markdown_summary
from vlforget.evaluation.runner import RESULTS_FILE


def main() -> None:
    runs = {}
    for arg in sys.argv[1:]:
        label, _, folder = arg.partition("=")
        if not folder:
            raise SystemExit(f"expected LABEL=RUN_DIR, got {arg!r}")
        runs[label] = json.loads((Path(folder) / RESULTS_FILE).read_text())
    print(markdown_summary(runs), end="")


if __name__ == "__main__":
    main()
