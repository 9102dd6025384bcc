"""Statistical models and fits."""
