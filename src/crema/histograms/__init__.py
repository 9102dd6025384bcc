"""Histogram types and their safe storage (crema.histograms.io)."""
