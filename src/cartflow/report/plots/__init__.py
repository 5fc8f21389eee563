"""QC plots of a gated sample: per population, its parent's events as density, the gate drawn,
the placed cuts with their evidence, the counts in the title; and a patient's kinetics.

The report's plots (:func:`render_sample_plots`) are binned densities (``cartflow.report.density``),
drawn once per file content and gating; ``gate --plots`` draws print-quality PNGs with
matplotlib (:func:`gate_plots`).

Modules: ``shapes`` (what a population's plot shows), ``gate_figures`` (matplotlib PNGs),
``report_panels`` (the report's binned panels), ``cache`` (those drawn once and kept),
``kinetics`` (the kinetics SVG); each imports only those before it.
"""

from cartflow.report.plots.cache import PLOTS_VERSION, plots_key, render_sample_plots, unnumbered
from cartflow.report.plots.gate_figures import PLOT_EVENTS, draw_population, gate_plots
from cartflow.report.plots.kinetics import FLOOR, KINETICS_SERIES, KINETICS_TICKS, kinetics_svg
from cartflow.report.plots.report_panels import sample_panels

__all__ = [
    "FLOOR",
    "KINETICS_SERIES",
    "KINETICS_TICKS",
    "PLOTS_VERSION",
    "PLOT_EVENTS",
    "draw_population",
    "gate_plots",
    "kinetics_svg",
    "plots_key",
    "render_sample_plots",
    "sample_panels",
    "unnumbered",
]
