"""Declarative gating templates: populations with a parent and a phenotype or a shape gate.

A template is YAML a cytometrist can read (see ``panels/templates/``). Phenotypes are written
``CD3+ CAR+ CD8+ CD4- CD45RA+ CD62L+ CD27++ CD95+``: ``+`` at or above the marker's positive
cut, ``-`` below it, ``++`` at or above its bright cut, ``dim`` between the two. Every
threshold names how it is placed from data, on which population, within which bounds, and its
default. Problems are reported at load time with the file, line and reason.
"""

from cartflow.gating.template.loader import POPULATION_FIELDS, load_template
from cartflow.gating.template.model import OptionsError, Template
from cartflow.gating.template.reader import CUT_FIELDS, VALLEY_SIDES
from cartflow.gating.template.spec import (
    METHODS,
    PART_SEPARATOR,
    SHAPE_GATES,
    TRANSFORM_DEFAULTS,
    TRANSFORMS,
    Condition,
    CutSpec,
    Level,
    PopulationSpec,
    ThresholdSpec,
    parse_phenotype,
)

__all__ = [
    "CUT_FIELDS",
    "METHODS",
    "PART_SEPARATOR",
    "POPULATION_FIELDS",
    "SHAPE_GATES",
    "TRANSFORMS",
    "TRANSFORM_DEFAULTS",
    "VALLEY_SIDES",
    "Condition",
    "CutSpec",
    "Level",
    "OptionsError",
    "PopulationSpec",
    "Template",
    "ThresholdSpec",
    "load_template",
    "parse_phenotype",
]
