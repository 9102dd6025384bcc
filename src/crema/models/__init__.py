"""Columnar ML model wrappers (ONNX runtime core) usable inside or outside processors."""
