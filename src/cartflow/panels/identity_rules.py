"""Where a lab's files carry their identity: the keywords and file-name patterns read when no
manifest names a file (``identity.yaml`` of a configuration folder)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from cartflow.io.errors import IdentityError, YamlPlaces, yaml_problem


@dataclass(frozen=True)
class IdentityRules:
    """Where to look for identity when no manifest names the file."""

    patient_keywords: tuple[str, ...] = ("PATIENT ID", "PATIENTID", "$PATIENTID", "SUBJECT ID")
    timepoint_keywords: tuple[str, ...] = ("TIMEPOINT", "VISIT", "TIME POINT")
    tube_keywords: tuple[str, ...] = ("TUBE NAME", "TUBE", "$TUBE")
    filename_patterns: tuple[str, ...] = (
        r"^(?P<patient>[A-Za-z]+[-_]?\d+)[ _-]+"
        r"(?P<timepoint>(?:LA|D\+?-?\d+|M\d+|Day ?\d+|Month ?\d+))"
        r"[ _-]+(?P<tube>.+?)(?:_\d{3})?$",
    )
    stored_keywords: tuple[str, ...] = ()
    """Keywords the store keeps besides the standard ones and those above (no PHI)."""
    on_disagreement: Literal["quarantine", "review"] = "quarantine"
    """What happens to a file whose sources of identity disagree (or that repeats another
    file's patient, timepoint and tube): refused, or stored and listed for review."""

    @classmethod
    def from_yaml(cls, path: Path) -> IdentityRules:
        """Rules from a YAML file; each problem names the file and line."""
        try:
            text = path.read_text(encoding="utf-8")
            raw = yaml.safe_load(text) or {}
        except (OSError, UnicodeDecodeError) as exc:
            problem = getattr(exc, "strerror", None) or exc
            raise IdentityError(path, f"identity rules cannot be read: {problem}") from exc
        except yaml.YAMLError as exc:
            raise IdentityError(*yaml_problem(path, exc)) from exc
        places = YamlPlaces.of_text(path, text)
        if not isinstance(raw, dict):
            problem = "identity rules must be a mapping of rule: [values]"
            raise IdentityError(places.where(), problem)
        known = ", ".join(cls.__dataclass_fields__)
        choice = raw.pop("on_disagreement", "quarantine")
        if choice not in ("quarantine", "review"):
            where = places.where("on_disagreement")
            raise IdentityError(where, f"on_disagreement: {choice!r} is not quarantine or review")
        for name, values in raw.items():
            where = places.where(str(name))
            if name not in cls.__dataclass_fields__:
                raise IdentityError(where, f"unknown identity rule(s): {name} (known: {known})")
            texts = isinstance(values, list) and all(isinstance(v, str) and v for v in values)
            if not texts:
                raise IdentityError(where, f"{name}: expected a list of texts, not {values!r}")
        fields = {k: tuple(v) for k, v in raw.items()}
        for i, pattern in enumerate(fields.get("filename_patterns", ())):
            try:
                re.compile(pattern)
            except re.error as exc:
                where = places.where(f"filename_patterns[{i}]")
                raise IdentityError(where, f"filename pattern {pattern!r}: {exc}") from exc
        return cls(**fields, on_disagreement=choice)
