"""Configuration, datasets, executors, command line, outputs and plots."""
