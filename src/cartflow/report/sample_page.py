"""What a sample page shows: each population with its counts, the gate drawn on its own
markers, and every cut that defines it with its value, method, bounds, fallback reason and
the density it was placed on (from the evidence stored with the gating)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from cartflow.gating.template import Template
from cartflow.pipeline.triage import flag_kind, severity


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
    """Where the cut's density is shown (the page's one drawing of it, used again)."""
    drawing: Markup | None = None
    """The density drawn (SVG markup), once per page (:func:`density_symbols`)."""


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


DENSITY_SIZE = (240, 56)
"""Width and height of a cut's density drawing (CSS pixels)."""

DENSITY_CSS = f"svg.density{{width:{DENSITY_SIZE[0]}px;height:{DENSITY_SIZE[1]}px}}"

DENSITY_POINTS = 64
"""At most this many points of a stored density are drawn (one every 3–4 pixels)."""


def density_drawing(
    evidence: Mapping[str, Any], value: float | None, fallback: bool
) -> str | None:
    """The density a cut was placed on, its bounds shaded and the cut drawn (dashed when it
    fell back), as SVG markup in a DENSITY_SIZE box; None without a stored density."""
    grid, density = evidence.get("grid"), evidence.get("density")
    if not grid or not density or len(grid) != len(density):
        return None
    (width, height), pad = DENSITY_SIZE, 2
    bounds = evidence.get("bounds")
    lo = min(grid[0], *(bounds or [grid[0]]), value if value is not None else grid[0])
    hi = max(grid[-1], *(bounds or [grid[-1]]), value if value is not None else grid[-1])
    top = max(max(density), 1e-12)

    def x(v: float) -> float:
        return pad + (width - 2 * pad) * (v - lo) / ((hi - lo) or 1.0)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    step = -(-len(grid) // DENSITY_POINTS)  # a point every few pixels is smooth enough
    px = [round(x(g)) for g in grid[::step]]
    py = [round(y(d)) for d in density[::step]]
    moves = " ".join(  # each point from the one before: short numbers, the same pixels
        f"{px[i] - px[i - 1]},{py[i] - py[i - 1]}" for i in range(1, len(px))
    )
    parts = []
    if bounds:
        parts.append(
            f'<rect x="{x(bounds[0]):.1f}" width="{x(bounds[1]) - x(bounds[0]):.1f}" '
            f'height="{height}" fill="#2ca02c" fill-opacity="0.12"><title>template bounds '
            f"{bounds[0]:.3g} – {bounds[1]:.3g}</title></rect>"
        )
    line = f"M{px[0]},{py[0]}" + (f"l{moves}" if moves else "")
    parts.append(f'<path d="{line}" fill="none" stroke="#444"/>')
    if value is not None:
        dash = ' stroke-dasharray="4 2"' if fallback else ""
        parts.append(
            f'<path d="M{x(value):.1f},0V{height}" stroke="#c00" stroke-width="1.5"{dash}>'
            f"<title>cut {value:.4g}</title></path>"
        )
    return "".join(parts)


def _density_id(name: str) -> str:
    return "cut-" + escape(name)


def density_use(name: str) -> Markup:
    """A cut's density where a table shows it: the page's one drawing of it, used again
    (:func:`density_symbols`)."""
    return Markup(f'<svg class="density"><use href="#{_density_id(name)}"/></svg>')


def density_symbols(sections: Sequence[PopulationSection]) -> Markup:
    """Each cut's density drawn once for the whole page (hidden; shown where used), however
    many populations list the cut."""
    drawings = {c.name: c.drawing for s in sections for c in s.cuts if c.drawing}
    if not drawings:
        return Markup("")
    width, height = DENSITY_SIZE
    symbols = "".join(
        f'<symbol id="{_density_id(name)}" viewBox="0 0 {width} {height}">{drawing}</symbol>'
        for name, drawing in drawings.items()
    )
    return Markup(f'<svg width="0" height="0" style="position:absolute">{symbols}</svg>')


def cut_evidence(name: str, cut: Mapping[str, Any]) -> CutEvidence:
    evidence = cut.get("evidence") or {}
    bounds = evidence.get("bounds")
    drawing = density_drawing(evidence, cut.get("value"), bool(cut.get("fallback")))
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
        density=density_use(name) if drawing else None,
        drawing=Markup(drawing) if drawing else None,
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
    evidence: dict[str, CutEvidence] = {}  # a cut shared by populations: read once
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
        listed = tuple(_evidence(evidence, n, cuts[n]) for n in names if n in cuts)
        sections.append(
            PopulationSection(
                population,
                row,
                definition,
                _captioned(plots, population, {c.name for c in listed}),
                listed,
            )
        )
    return sections


def _captioned(
    plots: Sequence[Mapping[str, Any]], population: str, listed: set[str]
) -> tuple[Mapping[str, Any], ...]:
    """A population's plots, each noting the cuts on its axes but those its section's
    table lists (with value, method and evidence) already."""
    return tuple(
        {**p, "notes": tuple(n for n in p.get("notes", ()) if n.split(":")[0] not in listed)}
        for p in plots
        if p.get("name") == population
    )


def _evidence(known: dict[str, CutEvidence], name: str, cut: Mapping[str, Any]) -> CutEvidence:
    if name not in known:
        known[name] = cut_evidence(name, cut)
    return known[name]


def flag_rows(flags: Sequence[str], reported: frozenset[str] | None) -> list[dict[str, str]]:
    """A sample's flags with their kind and severity."""
    return [
        {"flag": f, "kind": flag_kind(f).kind, "severity": severity(f, reported)} for f in flags
    ]
