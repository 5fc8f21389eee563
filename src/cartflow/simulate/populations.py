"""Simulated event populations: generation rows, their expression and scatter, tube labels."""

from __future__ import annotations

import numpy as np

from cartflow.simulate.cohort_model import CELL_POPULATIONS, FUNCTION_MARKS, LYMPH, PARTICLES

ROWS: tuple[str, ...] = (*CELL_POPULATIONS, "debris", "dead", "beads", "clog")
SOURCES: tuple[str, ...] = (*CELL_POPULATIONS, *PARTICLES, "beads", "clog")
_N_CELLS = len(CELL_POPULATIONS)
_ROW = {name: i for i, name in enumerate(ROWS)}
_SRC = {name: i for i, name in enumerate(SOURCES)}
MARKERS = ("CD45", "CD3", "CAR", "CD4", "CD8", "CD45RA", "CD62L", "CD27", "CD95", "CD19",
           *FUNCTION_MARKS)  # fmt: skip
_MARKER = {m: i for i, m in enumerate(MARKERS)}
_MARK_LEVEL = {"PD1": (3.35, 0.2), "LAG3": (3.45, 0.2), "CD71": (3.4, 0.2), "Ki67": (3.5, 0.22),
               "TCRgd": (3.8, 0.15)}  # fmt: skip

Component = tuple[float, float, float]  # probability, log10 median, log10 sd

_SUBSET_EXPRESSION: dict[str, dict[str, tuple[Component, ...]]] = {
    "naive": {"CD45RA": ((1, 3.5, 0.12),), "CD62L": ((1, 3.3, 0.15),), "CD27": ((1, 3.3, 0.12),)},
    "SCM": {
        "CD45RA": ((1, 3.4, 0.15),),
        "CD62L": ((1, 3.3, 0.15),),
        "CD27": ((1, 4.05, 0.1),),  # CD27 bright: what sets SCM apart
        "CD95": ((1, 3.2, 0.15),),  # CD95 clear of the negatives: what sets SCM apart from naive
    },
    "CM": {
        "CD45RA": ((0.1, 2.3, 0.2),),
        "CD62L": ((1, 3.2, 0.15),),
        "CD27": ((1, 3.45, 0.12),),
        "CD95": ((1, 3.3, 0.15),),
    },
    "EM": {"CD45RA": ((0.1, 2.3, 0.2),), "CD27": ((0.5, 3.2, 0.2),), "CD95": ((1, 3.5, 0.15),)},
    "TEMRA": {
        "CD45RA": ((1, 3.6, 0.15),),
        "CD27": ((0.15, 2.8, 0.25),),
        "CD95": ((1, 3.4, 0.15),),
    },
    "DN": {
        "CD45RA": ((0.5, 3.3, 0.2),),
        "CD62L": ((0.4, 2.8, 0.2),),
        "CD27": ((0.6, 3.3, 0.2),),
        "CD95": ((0.7, 3.2, 0.2),),
    },
}


def _expression(row: str) -> dict[str, tuple[Component, ...]]:
    """Positive components of each marker on a population; absent markers are negative."""
    parts = row.split("/")
    if row == "debris":
        return {"CD45": ((0.15, 2.3, 0.4),)}
    if row == "dead":
        return {"CD45": ((0.7, 3.0, 0.35),), "CD3": ((0.2, 2.8, 0.4),)}
    if parts[0] != "leukocytes":
        return {}
    if parts[1] == "granulocytes":
        return {"CD45": ((1, 3.05, 0.12),), "CD62L": ((0.9, 3.1, 0.2),),
                "CD95": ((0.8, 2.7, 0.2),), "CD45RA": ((0.15, 2.4, 0.25),)}  # fmt: skip
    if parts[1] == "monocytes":
        return {"CD45": ((1, 3.5, 0.1),), "CD4": ((1, 2.75, 0.15),), "CD95": ((1, 3.1, 0.15),),
                "CD45RA": ((0.5, 2.6, 0.25),), "CD62L": ((0.6, 2.8, 0.25),)}  # fmt: skip
    if parts[2] == "CD3neg":
        if parts[3] == "CD19":
            return {"CD45": ((1, 3.85, 0.1),), "CD19": ((1, 3.5, 0.12),),
                    "CD45RA": ((1, 3.7, 0.1),), "CD62L": ((0.8, 2.9, 0.2),),
                    "CD27": ((0.25, 3.2, 0.2),), "CD95": ((0.1, 2.8, 0.2),)}  # fmt: skip
        return {"CD45": ((1, 3.9, 0.1),), "CD45RA": ((0.9, 3.3, 0.15),),
                "CD8": ((0.35, 2.9, 0.2),), "CD62L": ((0.5, 2.6, 0.2),),
                "CD95": ((0.5, 3.0, 0.2),), "CD27": ((0.3, 3.0, 0.2),)}  # fmt: skip
    arm, lineage = parts[3], parts[4]
    expression: dict[str, tuple[Component, ...]] = {
        "CD45": ((1, 3.95, 0.1),),
        "CD3": ((1, 3.8, 0.12),),
    }
    if arm == "CAR":  # a bright population and a dim shoulder that can reach the negatives
        expression["CAR"] = ((0.85, 3.6, 0.2), (0.15, 3.15, 0.15))
    if lineage == "CD4":
        expression["CD4"] = ((1, 3.6, 0.1),)
    elif lineage == "CD8":
        expression["CD8"] = ((1, 4.0, 0.12),)
    else:
        expression["CD8"] = ((0.25, 2.8, 0.2),)
    expression.update(_SUBSET_EXPRESSION["DN" if lineage == "DN" else parts[5]])
    return expression


def _expression_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, log10 median, log10 sd) arrays of shape rows × markers × 2 components."""
    shape = (len(ROWS), len(MARKERS), 2)
    prob, mu, sd = np.zeros(shape), np.full(shape, 2.0), np.full(shape, 0.2)
    for r, row in enumerate(ROWS):
        for marker, components in _expression(row).items():
            for c, (p, m, s) in enumerate(components):
                prob[r, _MARKER[marker], c], mu[r, _MARKER[marker], c] = p, m
                sd[r, _MARKER[marker], c] = s
    return prob, mu, sd


def _scatter_table() -> np.ndarray:
    """Per row: FSC-A mean, FSC-A sd, log10 SSC-A, its sd, FSC-H/FSC-A ratio, its sd, AF."""
    table = np.zeros((len(ROWS), 7))
    for r, row in enumerate(ROWS):
        if row == "leukocytes/granulocytes":
            table[r] = (95_000, 12_000, 5.05, 0.08, 0.93, 0.025, 250)
        elif row == "leukocytes/monocytes":
            table[r] = (82_000, 9_000, 4.62, 0.08, 0.93, 0.025, 120)
        elif row.startswith(f"{LYMPH}/CD3neg/CD19neg"):
            table[r] = (56_000, 6_500, 4.15, 0.10, 0.93, 0.025, 45)
        elif row.startswith(f"{LYMPH}/CD3neg"):
            table[r] = (52_000, 6_000, 4.05, 0.10, 0.93, 0.025, 40)
        elif row.startswith(f"{LYMPH}/CD3/CAR/"):
            table[r] = (60_000, 8_000, 4.10, 0.10, 0.93, 0.025, 50)
        elif row.startswith(LYMPH):
            table[r] = (52_000, 6_000, 4.05, 0.09, 0.93, 0.025, 40)
        elif row == "debris":
            table[r] = (0, 0, 3.4, 0.35, 0.95, 0.06, 10)
        elif row == "dead":
            table[r] = (32_000, 9_000, 4.45, 0.15, 0.9, 0.05, 300)
        elif row == "beads":
            table[r] = (26_000, 1_500, 4.68, 0.025, 0.97, 0.01, 0)
        else:  # clog
            table[r] = (0, 0, 0, 0, 0, 0, 100)
    return table


_EXPR_P, _EXPR_MU, _EXPR_SD = _expression_tables()
_SCATTER = _scatter_table()


def tube_label(population: str, tube: str) -> str:
    """The truth label a tube reports: the population path truncated to what it resolves."""
    parts = population.split("/")
    if parts[0] != "leukocytes" or len(parts) < 3:
        return population
    if parts[2] == "CD3neg":
        return population if tube == "bcell" else f"{LYMPH}/CD3neg"
    return "/".join(parts[: {"memory": 6, "function": 5, "bcell": 4}[tube]])


def tube_labels(tube: str) -> tuple[str, ...]:
    """Every label a tube's truth files use, in a fixed order."""
    cells = dict.fromkeys(tube_label(p, tube) for p in CELL_POPULATIONS)
    return (*cells, "debris", "dead", "doublets", "beads", "clog")


def _source_to_label(tube: str) -> np.ndarray:
    labels = tube_labels(tube)
    return np.array([labels.index(tube_label(s, tube)) for s in SOURCES], dtype=np.int16)
