"""What a sample page shows: each population with its counts, the gate drawn on its own
markers, and every cut that defines it with its value, method, bounds, fallback reason and
the density it was placed on (from the evidence stored with the gating)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from gating.template import Template
from pipeline.triage import flag_kind, severity


@dataclass(frozen=True)
class CutEvidence:
    """One placed cut as the page shows it."""

    name: str
    value: float | None
    method: str
    fallback: bool
    reason: str | None
    bounds: tuple[float, float] | None
    estimated_on: str | None
    events: int | None
    source: str | None
    density: Markup | None


@dataclass(frozen=True)
class PopulationSection:
    """A population with its counts row, its gate plots (if drawn) and its cuts."""

    population: str
    row: Mapping[str, Any]
    definition: str
    plots: tuple[Mapping[str, Any], ...] = ()
    cuts: tuple[CutEvidence, ...] = field(default_factory=tuple)


def cut_names(template: Template, population: str) -> list[str]:
    """The cuts a population's own gate uses: its phenotype's (``CD27``, ``CD27.bright``
    for ``CD27++``) or, for a shape gate, the decisions named after it."""
    spec = template.population(population)
    names = []
    for condition in spec.phenotype:
        names.append(condition.marker)
        if condition.level in ("++", "dim"):
            names.append(f"{condition.marker}.bright")
    return list(dict.fromkeys(names))


def density_svg(
    evidence: Mapping[str, Any], value: float | None, fallback: bool, width: int = 240
) -> Markup | None:
    """A small inline SVG of the density a cut was placed on, its bounds shaded and the cut
    drawn (dashed when it fell back); None without a stored density."""
    grid, density = evidence.get("grid"), evidence.get("density")
    if not grid or not density or len(grid) != len(density):
        return None
    height, pad = 56, 2
    bounds = evidence.get("bounds")
    lo = min(grid[0], *(bounds or [grid[0]]), value if value is not None else grid[0])
    hi = max(grid[-1], *(bounds or [grid[-1]]), value if value is not None else grid[-1])
    top = max(max(density), 1e-12)

    def x(v: float) -> float:
        return pad + (width - 2 * pad) * (v - lo) / ((hi - lo) or 1.0)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    points = " ".join(f"{x(g):.1f},{y(d):.1f}" for g, d in zip(grid, density, strict=True))
    parts = [f'<svg class="density" width="{width}" height="{height}" role="img">']
    if bounds:
        parts.append(
            f'<rect x="{x(bounds[0]):.1f}" y="0" width="{x(bounds[1]) - x(bounds[0]):.1f}" '
            f'height="{height}" fill="#2ca02c" fill-opacity="0.12"><title>template bounds '
            f"{bounds[0]:.3g} – {bounds[1]:.3g}</title></rect>"
        )
    parts.append(f'<polyline points="{points}" fill="none" stroke="#444" stroke-width="1"/>')
    if value is not None:
        dash = ' stroke-dasharray="4 2"' if fallback else ""
        parts.append(
            f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="0" y2="{height}" '
            f'stroke="#c00" stroke-width="1.5"{dash}><title>cut {value:.4g}</title></line>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def cut_evidence(name: str, cut: Mapping[str, Any]) -> CutEvidence:
    evidence = cut.get("evidence") or {}
    bounds = evidence.get("bounds")
    return CutEvidence(
        name=name,
        value=cut.get("value"),
        method=cut.get("method", ""),
        fallback=bool(cut.get("fallback")),
        reason=evidence.get("reason"),
        bounds=tuple(bounds) if bounds else None,
        estimated_on=evidence.get("estimated_on"),
        events=evidence.get("events"),
        source=evidence.get("source"),
        density=density_svg(evidence, cut.get("value"), bool(cut.get("fallback"))),
    )


def population_sections(
    template: Template | None,
    rows: Sequence[Mapping[str, Any]],
    cuts: Mapping[str, Mapping[str, Any]],
    plots: Sequence[Mapping[str, Any]] = (),
) -> list[PopulationSection]:
    """Each counted population of a sample with its gate plots (``plots``: the sample's
    drawn panels, by population ``name``) and the cuts defining it."""
    sections = []
    for row in rows:
        population = row["population"]
        definition, names = "", []
        if template is not None:
            try:
                spec = template.population(population)
            except KeyError:
                spec = None
            if spec is not None:
                definition = " ".join(map(str, spec.phenotype)) or f"{spec.gate} gate"
                names = cut_names(template, population)
                if not spec.phenotype:  # a shape gate: the decisions named after it
                    names = [n for n in cuts if n == population or n.startswith(population + ".")]
        sections.append(
            PopulationSection(
                population,
                row,
                definition,
                tuple(p for p in plots if p.get("name") == population),
                tuple(cut_evidence(n, cuts[n]) for n in names if n in cuts),
            )
        )
    return sections


def flag_rows(flags: Sequence[str], reported: frozenset[str] | None) -> list[dict[str, str]]:
    """A sample's flags with their kind and severity."""
    return [
        {"flag": f, "kind": flag_kind(f).kind, "severity": severity(f, reported)} for f in flags
    ]
