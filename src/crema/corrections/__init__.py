"""correctionlib-based corrections, weights and systematic variations."""
