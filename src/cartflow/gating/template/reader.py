"""The template loader's checks of a cut's and a gate's options, each problem at its YAML line."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from cartflow.gating.errors import GatingError
from cartflow.gating.options import GATE_OPTIONS, REQUIRED, read_options
from cartflow.gating.placement import Bounds
from cartflow.gating.template.spec import METHODS, CutSpec
from cartflow.io.errors import YamlPlaces

VALLEY_SIDES = ("lower", "middle", "upper")
"""Where in a valley's flat floor a valley cut lands."""
CUT_FIELDS = frozenset(
    {"method", "bounds", "default", "estimate_on", "negative", "quantile", "margin",
     "components", "floor_sd", "min_positives", "hidden_share", "min_events", "bright",
     "valley_side", "smoothing"}
)  # fmt: skip


class _Reader(YamlPlaces):
    def error(self, key: str, problem: str) -> GatingError:
        return GatingError(self.where(key), problem)

    def number(self, raw: dict, name: str, key: str, default: float) -> float:
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"{key}.{name}", f"{name} must be a number, not {value!r}")
        return float(value)

    def methods(self, method: Any, key: str) -> tuple[str, ...]:
        methods = tuple(method) if isinstance(method, list) else (method,)
        if not methods:
            raise self.error(key, "method needs at least one of " + ", ".join(METHODS))
        for name in methods:
            if name not in METHODS:
                raise self.error(key, f"method {name!r} is not one of {', '.join(METHODS)}")
        return methods

    def bounds(self, raw: dict, key: str) -> Bounds:
        try:
            low, high = (float(v) for v in raw["bounds"])
            bounds = Bounds(low, high, float(raw["default"]))
        except KeyError as exc:
            raise self.error(key, f"missing {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise self.error(key, f"bounds/default: {exc}") from None
        if not low < high:
            raise self.error(key, f"bounds [{low}, {high}] are empty")
        return bounds

    def cut(self, raw: Any, key: str) -> CutSpec:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)  # a fixed cut, as a plain number
            return CutSpec(("fixed",), Bounds(value, value, value))
        if not isinstance(raw, dict):
            raise self.error(
                key, "a threshold is a number (a fixed cut) or a mapping (method, bounds, default)"
            )
        unknown = sorted(set(map(str, raw)) - CUT_FIELDS - {"marker"})
        if unknown:
            raise self.error(f"{key}.{unknown[0]}", f"unknown field {unknown[0]!r}")
        methods = self.methods(raw.get("method"), key)
        bounds = self.bounds(raw, key)
        estimate_on = raw.get("estimate_on")
        chain = tuple(estimate_on) if isinstance(estimate_on, list) else (estimate_on,)
        if not all(isinstance(p, str) and p for p in chain if p is not None):
            raise self.error(key, "'estimate_on' must be a population id or a list of them")
        if "tail" in methods and not raw.get("negative"):
            raise self.error(key, "method tail needs 'negative': the internal negative population")
        if {"valley", "mixture", "balance"} & set(methods) and not estimate_on:
            raise self.error(
                key, "methods valley, mixture and balance need 'estimate_on': a population id"
            )
        quantile = self.number(raw, "quantile", key, 0.995)
        if not 0 < quantile < 1:
            raise self.error(f"{key}.quantile", f"quantile {quantile} must lie in (0, 1)")
        components = self.number(raw, "components", key, 2)
        if components < 1 or components != int(components):
            raise self.error(f"{key}.components", "components must be a whole number >= 1")
        valley_side = str(raw.get("valley_side", "middle"))
        if valley_side not in VALLEY_SIDES:
            raise self.error(
                f"{key}.valley_side", f"valley_side must be one of {', '.join(VALLEY_SIDES)}"
            )
        return CutSpec(
            methods=methods,
            bounds=bounds,
            estimate_on=chain[0],
            negative=raw.get("negative"),
            quantile=quantile,
            margin=self.number(raw, "margin", key, 0.0),
            components=int(components),
            floor_sd=self.number(raw, "floor_sd", key, 2.5),
            min_positives=self.number(raw, "min_positives", key, 100.0),
            hidden_share=self.number(raw, "hidden_share", key, 0.4),
            also_on=tuple(str(p) for p in chain[1:]),
            min_events=int(self.number(raw, "min_events", key, 200)),
            valley_side=valley_side,
            smoothing=self.number(raw, "smoothing", key, 1.0),
        )

    def options(self, cls: type, raw: dict[str, Any], key: str, what: str) -> Any:
        """A method's typed options from the template's mapping (defaults filled in)."""
        options, problem = read_options(cls, raw)
        if problem:
            joiner = " " if problem[1].startswith("has ") else ": "
            raise self.error(f"{key}.{problem[0]}", f"{what}{joiner}{problem[1]}")
        return options

    def gate_options(self, gate: str, options: dict[str, Any], key: str) -> Any:
        """Shape-gate options: known names of the right kind, dead-cell CD45 splits, and
        scatter clusters as name: [FSC-A, SSC-A]."""
        unknown = sorted(set(options) - {f.name for f in fields(GATE_OPTIONS[gate])})
        if unknown:
            self.options(GATE_OPTIONS[gate], options, key, f"gate {gate}")  # names what is allowed
        splits = options.get("dead_cd45_sd")
        if splits is not None:
            numbers = isinstance(splits, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in splits
            )
            if not numbers:
                raise self.error(
                    f"{key}.dead_cd45_sd", "dead_cd45_sd needs a list of positive CD45 sds"
                )
        clusters = options.get("clusters")
        if clusters is not None:
            if not isinstance(clusters, dict) or not clusters:
                raise self.error(f"{key}.clusters", "clusters must map names to [FSC-A, SSC-A]")
            for name, where in clusters.items():
                ok = isinstance(where, list) and len(where) == 2
                if not ok or not all(isinstance(v, int | float) and v > 0 for v in where):
                    raise self.error(
                        f"{key}.clusters.{name}",
                        f"cluster {name!r} needs [FSC-A, SSC-A] as two positive numbers",
                    )
            keep = options.get("keep", ["lymphocytes", "monocytes", "granulocytes"])
            missing = [k for k in keep if k not in clusters]
            if missing:
                raise self.error(
                    f"{key}.keep", f"kept cluster {missing[0]!r} is not one of the clusters"
                )
        for name in REQUIRED.get(gate, ()):
            if name not in options:
                raise self.error(key, f"gate {gate} needs {name!r}")
        typed = self.options(GATE_OPTIONS[gate], options, key, f"gate {gate}")
        sized = [n for n in ("vertices", "min", "max") if getattr(typed, n, ())]
        for name in sized:
            if name != "vertices" and len(getattr(typed, name)) != len(typed.channels):
                raise self.error(f"{key}.{name}", f"{name} needs one number per channel")
        return typed
