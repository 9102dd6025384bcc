"""b-tagging working points from the CMS BTV correctionlib files."""

from __future__ import annotations

from pathlib import Path

import correctionlib
import correctionlib.schemav2

from crema.schema import ConfigError


def working_point(path: str | Path, tagger: str, working_point: str) -> float:
    """Discriminator threshold of ``working_point`` (e.g. ``M``) for ``tagger`` (e.g. ``particleNet``).

    Reads the ``<tagger>_wp_values`` correction; errors name the file and list what it contains.
    """
    cset = correctionlib.CorrectionSet.from_file(str(path))
    key = f"{tagger}_wp_values"
    if key not in list(cset.keys()):
        raise ConfigError(f"{path}: no correction {key!r} (the file has: {', '.join(cset.keys())})")
    correction = cset[key]
    try:
        return float(correction.evaluate(working_point))
    except Exception:
        points = _working_point_names(path, key)
        raise ConfigError(
            f"{path}: {key} has no working point {working_point!r} (it has: {', '.join(points)})"
        ) from None


def _working_point_names(path: str | Path, key: str) -> list[str]:
    # only on the error path: the compiled correction does not expose its category keys
    model = correctionlib.schemav2.CorrectionSet.model_validate(_read_json(path))
    data = next(c for c in model.corrections if c.name == key).data
    return [str(item.key) for item in getattr(data, "content", [])]


def _read_json(path: str | Path) -> dict:
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as stream:
        return json.load(stream)
