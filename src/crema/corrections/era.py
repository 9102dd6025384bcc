"""Era configuration: which correction files and keys a data-taking period uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crema.schema import ConfigError, load

_PACKAGE = Path(__file__).resolve().parent.parent
ERA_DIR = _PACKAGE / "configs" / "eras"
CORRECTIONS_DIR = _PACKAGE / "data" / "corrections"


@dataclass(frozen=True)
class EraConfig:
    """Correction files of one era. Relative file names resolve inside crema's shipped corrections."""

    name: str
    btag_file: str

    def validate(self) -> None:
        path = resolve_correction_file(self.btag_file)
        if not path.exists():
            raise ConfigError(f"btag_file: {path} does not exist")

    def path(self, name: str) -> Path:
        """Absolute path of the file held in field ``name``."""
        return resolve_correction_file(getattr(self, name))


def resolve_correction_file(name: str | Path) -> Path:
    """An absolute path as given, else a file shipped in ``crema/data/corrections``."""
    path = Path(name)
    return path if path.is_absolute() else CORRECTIONS_DIR / path


def load_era(name_or_path: str | Path) -> EraConfig:
    """Load an era by builtin name (``2022``) or by YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = ERA_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in ERA_DIR.glob("*.yaml"))
            raise ConfigError(f"era {name_or_path!r}: no such builtin era (known: {', '.join(known)})")
    return load(EraConfig, path)
