"""Histogram types beyond plain ``hist`` (EFT histograms with per-bin quadratic coefficients) and their
safe storage (crema.histograms.io: numpy archives + JSON, no pickle)."""
