"""One line per (preset, tokens) from A/B runs of ironmoe-bench --json: each variant's median over
the rounds of the per-run median_us, and the change of every variant against the first.

    python3 scripts/ab_summary.py LABEL WORK_DIR VARIANT...

reads WORK_DIR/VARIANT-*.json (one file per round), as scripts/ab-env.sh and scripts/ab-builds.sh
write them; LABEL names the variants in the header (e.g. the environment variable).
"""

import glob
import json
import os
import statistics
import sys


def main():
    label, work, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
    medians = {}  # (preset, tokens) -> variant -> [median_us per round]
    order = []
    for variant in variants:
        for path in sorted(glob.glob(os.path.join(work, f"{variant}-*.json"))):
            with open(path) as f:
                rows = json.load(f)["rows"]
            for row in rows:
                if "median_us" not in row:
                    continue
                key = (row["preset"], row["tokens"])
                if key not in medians:
                    medians[key] = {}
                    order.append(key)
                medians[key].setdefault(variant, []).append(row["median_us"])
    header = f"{'preset':20s} {'tokens':>7s}" + "".join(
        f" {label + '=' + v:>24s}" for v in variants)
    print(header + "  change")
    for key in order:
        cells = [statistics.median(medians[key][v]) if v in medians[key] else float("nan")
                 for v in variants]
        text = "".join(f" {c:24.1f}" for c in cells)
        change = ", ".join(f"{(c / cells[0] - 1) * 100:+.1f}%" for c in cells[1:])
        print(f"{key[0]:20s} {key[1]:7d}{text}  {change}")


if __name__ == "__main__":
    main()
