"""Where the scatter clusters start: the shipped panels' anchors against a start on the data.

Scores simulated cohorts (``bench/accuracy.py``'s scoring; judged as the accuracy test
judges: at least 200 true events, populations the panel approximates left out) with the
shipped configuration and with variants of it, and compares every judged row with the
shipped configuration's own: rows worse, better, worse by more than ``--margin``, the
largest drop, and the populations where rows dropped. The variants, each a copy of the
shipped configuration folder:

- ``data``: the panels set nothing over the templates (no ``gate_options``), so the
  ``cells`` gate starts as the templates say, on the data (the clusters' layout moved onto
  the sample's densest scatter);
- ``fsc+1%`` and ``fsc-1%``: the templates' cluster positions with forward scatter 1 %
  higher or lower, started there (the panels' ``start: anchors``): a gain change no start
  on the data can tell from the sample's own biology, so how far the anchored fit itself
  moves the judged rows, the yardstick for any start on the data.

Usage: python bench/scatter_start.py --cohort DIR [--cohort DIR ...] [--margin 0.001]
       (cohorts simulated as tests/test_gating_accuracy.py does, e.g. with
       ``cartflow.simulate.simulate_cohort``)
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cartflow.simulate.accuracy import MIN_EVENTS, score_cohort, table

TUBES = ("memory", "function", "bcell")
CLUSTERS = re.compile(r"^    clusters:\n(?:      .*\n)+", re.MULTILINE)
ANCHOR = re.compile(r"^(\s+\w+: \[)(\d+(?:\.\d+)?)(, \d+(?:\.\d+)?\])$", re.MULTILINE)
PANEL_OPTIONS = re.compile(r"^gate_options:\n(?:  .*\n)+", re.MULTILINE)

Edit = Callable[[Path], None]


def _rewrite(path: Path, change: Callable[[str], str]) -> None:
    text = path.read_text(encoding="utf-8")
    changed = change(text)
    if changed == text:
        raise SystemExit(f"{path}: the variant changes nothing")
    path.write_text(changed, encoding="utf-8")


def start_on_data(folder: Path) -> None:
    """The configuration with every panel's ``gate_options`` left out."""
    from cartflow.panels import panel_files

    for path in panel_files(folder):
        _rewrite(path, lambda text: PANEL_OPTIONS.sub("", text))


def scaled_fsc(factor: float) -> Edit:
    """The configuration with every template's scatter clusters' forward scatter times
    ``factor``."""

    def scale(block: re.Match) -> str:
        return ANCHOR.sub(lambda m: f"{m[1]}{float(m[2]) * factor:.0f}{m[3]}", block[0])

    def edit(folder: Path) -> None:
        for tube in TUBES:
            _rewrite(folder / "templates" / f"{tube}.yaml", lambda text: CLUSTERS.sub(scale, text))

    return edit


VARIANTS: dict[str, Edit] = {
    "data": start_on_data,
    "fsc+1%": scaled_fsc(1.01),
    "fsc-1%": scaled_fsc(0.99),
}


def variant_config(edit: Edit, folder: Path):
    """A copy of the shipped configuration in ``folder``, edited, read."""
    from cartflow.panels.config import init_config, load_config

    init_config(folder)
    edit(folder)
    return load_config(folder)


def judged(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows["true"] >= MIN_EVENTS) & ~rows["approximated"].astype(bool)]


def compare(shipped: pd.DataFrame, variant: pd.DataFrame, margin: float) -> dict:
    """Judged rows of ``variant`` against the same rows of ``shipped``."""
    both = judged(shipped).merge(variant, on=["cohort", "file", "population"], suffixes=("", "_v"))
    change = both["f1_v"] - both["f1"]
    dropped = both[change < -margin]
    return {
        "judged": len(both),
        "worse": int((change < 0).sum()),
        "better": int((change > 0).sum()),
        f"worse>{margin:g}": len(dropped),
        "worst": round(float(change.min()), 4),
        "best": round(float(change.max()), 4),
        "populations": ", ".join(
            f"{p} {n}" for p, n in dropped["population"].value_counts().items()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", type=Path, action="append", required=True)
    parser.add_argument("--margin", type=float, default=0.001)
    args = parser.parse_args()

    def score(config) -> pd.DataFrame:
        return pd.concat(
            table(score_cohort(root, TUBES, config)).assign(cohort=str(root))
            for root in args.cohort
        )

    shipped = score(None)
    lines = []
    with tempfile.TemporaryDirectory(prefix="cartflow-scatter-start-") as tmp:
        for name, edit in VARIANTS.items():
            config = variant_config(edit, Path(tmp) / name.replace("%", "pct"))
            lines.append({"variant": name, **compare(shipped, score(config), args.margin)})
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print(pd.DataFrame(lines).to_string(index=False))


if __name__ == "__main__":
    main()
