"""Shared test fixtures: paths of the real reference files shipped in tests/data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

DATA = Path(__file__).resolve().parent / "data"
REAL_NANO = DATA / "nano_tt_v12.root"
PFNANO = DATA / "pfnano.root"
