"""A lab's configuration folder: its panels, gating templates, marker names, identity rules,
ALL-Hematotox table and outcome settings, in one layout (the package's ``panels/`` folder is
the shipped CAR-T configuration and the default).

```
DIR/
  *.yaml               panels: one file per tube, one layout per cytometer
  markers.yaml         marker spellings, and `read_as:` for one antigen read as another
  fluorochromes.yaml   fluorochrome names stripped from $PnS labels
  templates/TUBE.yaml  the gating template of each tube
  gates/TUBE.wsp|.xml  a lab's fixed gates for a tube, used instead of its template  optional
  identity.yaml        identity rules (keywords, file-name patterns)       optional
  hematotox.yaml       ALL-Hematotox point table                           optional
  analysis.yaml        outcome-stage settings                              optional
  *.csv                spillover matrices named by a panel's `spillover:`  optional
```

The folder is read once into a :class:`LabConfig`, passed down explicitly; its content
hash is recorded with every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from cartflow.gating.errors import GatingError
from cartflow.gating.template import OptionsError, Template, load_template
from cartflow.io.errors import CartflowError
from cartflow.panels import (
    PANEL_DIR,
    MarkerNames,
    Panel,
    read_marker_names,
    read_panels,
)
from cartflow.panels.identity_rules import IdentityRules

CONFIG_ENV = "CARTFLOW_CONFIG"
DEFAULT_CONFIG_DIR = PANEL_DIR
TEMPLATE_FOLDER = "templates"
GATES_FOLDER = "gates"
_SKIPPED = ("__pycache__", ".")


class ConfigError(CartflowError):
    """The configuration folder, or a file in it, is not usable."""

    code = "config"


@dataclass(frozen=True)
class LabConfig:
    """A configuration folder as read: panels, marker names and where the rest lies."""

    directory: Path
    sha256: str
    panels: tuple[Panel, ...]
    names: MarkerNames
    identity: IdentityRules = field(default_factory=IdentityRules)
    identity_file: Path | None = None
    hematotox: Path | None = None
    analysis: Path | None = None

    @property
    def is_default(self) -> bool:
        return self.directory == DEFAULT_CONFIG_DIR

    def stored_panel(self, panel_id: str, sha256: str, tube: str) -> Panel | None:
        """The panel a sample was matched to at ingest (its id and SHA-256 as stored), when
        this configuration still holds it unchanged for the sample's tube; None: gone or
        changed since, so the file is to be matched again."""
        for panel in self.panels:
            if panel.id == panel_id:
                return panel if panel.sha256 == sha256 and panel.tube == tube else None
        return None

    def template_path(self, tube: str) -> Path:
        return self.directory / TEMPLATE_FOLDER / f"{tube}.yaml"

    def template(self, tube: str) -> Template:
        """The gating template of a tube (``templates/<tube>.yaml``)."""
        path = self.template_path(tube)
        if not path.is_file():
            raise ConfigError(
                path, f"no gating template for tube {tube!r}: write one there "
                f"(templates of this configuration: {', '.join(self.template_tubes()) or 'none'})"
            )  # fmt: skip
        return _template(path, hashlib.sha256(path.read_bytes()).hexdigest())

    def lab_gate_files(self) -> dict[str, Path]:
        """Tube → the lab's fixed gates that gate it instead of a template
        (``gates/<tube>.xml`` Gating-ML, ``.wsp`` FlowJo 10 workspace, ``.xml`` FACSDiva
        export or FlowJo 9 workspace); a tube with two such files is refused."""
        found: dict[str, Path] = {}
        for path in sorted((self.directory / GATES_FOLDER).glob("*")):
            if path.suffix.lower() not in (".xml", ".wsp"):
                continue
            if path.stem in found:
                raise ConfigError(path, f"tube {path.stem!r} has fixed gates in two files")
            found[path.stem] = path
        return found

    def template_tubes(self) -> tuple[str, ...]:
        return tuple(sorted(p.stem for p in (self.directory / TEMPLATE_FOLDER).glob("*.yaml")))

    def spillover_path(self, panel: Panel) -> Path | None:
        """The spillover matrix a panel names (relative to this folder), if any."""
        return self.directory / panel.spillover if panel.spillover else None

    def panel_sha256(self, tube: str) -> str:
        """SHA-256 of what resolves a tube's detectors to markers: its panels (every layout,
        as written and as resolved, with their spillover matrices), the spellings and
        ``read_as`` entries of their markers, and the fluorochrome names stripped from
        labels. It keys a sample's gating with the template's hash, so that a change to
        any of these re-gates that tube's samples and no other. A panel's hash is that of
        its file as written, so its ``gate_options`` (the options its cytometer sets on the
        template's gates) are part of it."""
        panels = sorted((p for p in self.panels if p.tube == tube), key=lambda p: p.id)
        markers = {m for p in panels for m in (*p.markers, *p.omitted)}
        spillovers = {p.spillover: self.spillover_path(p) for p in panels if p.spillover}
        resolved = {
            "panels": [
                [p.id, p.sha256, [[c.channel, c.marker] for c in p.channels], sorted(p.omitted)]
                for p in panels
            ],
            "spillover": {
                name: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
                for name, path in sorted(spillovers.items())
            },
            # spellings, read_as entries among them, of the tube's markers
            "spellings": sorted([s, m] for s, m in self.names.aliases.items() if m in markers),
            "fluorochromes": sorted(self.names.fluorochromes),
        }
        return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode("utf-8")).hexdigest()

    def provenance(self) -> dict[str, str]:
        return {"config": str(self.directory), "config_sha256": self.sha256}


def gate_options_problem(panel: Panel, template: Template) -> ConfigError | None:
    """Whether a panel's ``gate_options`` fit its tube's template: None, or the problem
    (:func:`options_error`)."""
    try:
        template.with_options(panel.gate_options)
    except OptionsError as exc:
        return options_error(panel, template, exc)
    return None


def options_error(panel: Panel, template: Template, exc: OptionsError) -> ConfigError:
    """A panel's ``gate_options`` that do not fit a template, naming the panel file, the
    line of the entry and what the template allows."""
    lines = panel.gate_option_lines
    option = exc.option.split(".")[0]
    line = lines.get((exc.population, option)) or lines.get((exc.population, "")) or 1
    return ConfigError(
        f"{panel.source} line {line}",
        f"gate_options {exc.population}: {exc.problem} (template {template.source})",
    )


def _check_panel_options(directory: Path, panels: tuple[Panel, ...]) -> None:
    """Every panel's ``gate_options`` against its tube's template (a panel without them, or
    whose tube's template is missing or unreadable, is left to gating to report)."""
    for panel in panels:
        path = directory / TEMPLATE_FOLDER / f"{panel.tube}.yaml"
        if not panel.gate_options or not path.is_file():
            continue
        try:
            template = _template(path, hashlib.sha256(path.read_bytes()).hexdigest())
        except GatingError:
            continue
        problem = gate_options_problem(panel, template)
        if problem is not None:
            raise problem


@cache
def _template(path: Path, digest: str) -> Template:
    """A template read once per content (``digest`` keys the cache)."""
    return load_template(path)


def config_files(directory: Path) -> list[Path]:
    """Every file of a configuration folder that belongs to it (no caches, no code)."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix != ".py"
        and not any(part.startswith(_SKIPPED) for part in p.relative_to(directory).parts)
    )


def content_hash(directory: Path) -> str:
    """SHA-256 over the names and bytes of the folder's files."""
    digest = hashlib.sha256()
    for path in config_files(directory):
        digest.update(path.relative_to(directory).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def config_directory(directory: Path | None = None) -> Path:
    """The folder given, else ``$CARTFLOW_CONFIG``, else the shipped configuration."""
    if directory is None and os.environ.get(CONFIG_ENV):
        directory = Path(os.environ[CONFIG_ENV])
    if directory is None:
        return DEFAULT_CONFIG_DIR
    if not directory.is_dir():
        raise ConfigError(
            directory, "is not a configuration folder (`cartflow config init DIR` writes one)"
        )
    return directory.resolve()


def load_config(directory: Path | None = None) -> LabConfig:
    """Read a configuration folder (see the module docstring for its layout)."""
    directory = config_directory(directory)
    names = read_marker_names(directory)
    panels = read_panels(directory, names)
    if not panels:
        raise ConfigError(
            directory, "holds no panel: `cartflow panel draft FILE --tube NAME --config DIR` "
            "writes one from a file"
        )  # fmt: skip
    identity_file = _optional(directory, "identity.yaml")
    identity = IdentityRules.from_yaml(identity_file) if identity_file else IdentityRules()
    hematotox, analysis = (
        _optional(directory, "hematotox.yaml"),
        _optional(directory, "analysis.yaml"),
    )
    _check_panel_options(directory, panels)
    return LabConfig(
        directory=directory,
        sha256=content_hash(directory),
        panels=panels,
        names=names,
        identity=identity,
        identity_file=identity_file,
        hematotox=hematotox,
        analysis=analysis,
    )


def _optional(directory: Path, name: str) -> Path | None:
    path = directory / name
    return path if path.is_file() else None


def init_config(target: Path, source: Path = DEFAULT_CONFIG_DIR) -> list[Path]:
    """Write a copy of a configuration (the shipped one by default) to ``target`` (which
    must not hold one)."""
    if target.exists() and any(target.iterdir()):
        raise ConfigError(target, "is not empty: give a new folder")
    written = []
    for path in config_files(source):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        written.append(destination)
    return written
