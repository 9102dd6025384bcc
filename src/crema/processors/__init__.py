"""coffea processors: select -> correct -> infer -> fill."""
