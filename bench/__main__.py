"""``python -m bench`` (``make bench``): run every benchmark in turn and print its figures.

Each benchmark generates its log under ``bench/out/`` on first use and prints ratios against a
baseline measured in the same run. ``--with-sliceline`` adds the slice-finding comparison, which
installs the ``sliceline`` package into its own venv under ``bench/out/`` (never the project's).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_overview.py", "bench_metrics.py", "bench_drift.py", "bench_attributions.py"]


def main() -> int:
    """Run the benchmarks; the exit code is the first failing one's, or 0."""
    names = BENCHMARKS + (["bench_slices.py"] if "--with-sliceline" in sys.argv[1:] else [])
    for name in names:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / name)])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
