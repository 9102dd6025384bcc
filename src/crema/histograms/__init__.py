"""Histogram types beyond plain ``hist``: EFT histograms with per-bin quadratic coefficients."""
