"""Statistical inference on crema histograms: pyhf workspaces, fits, significances, CLs limits, mass scans.

Pure functions of per-process templates (numpy arrays) and fit settings; nothing here reads a run
directory (that is :mod:`crema.workflows.fit`). See docs/fit.md.
"""


class FitFailed(RuntimeError):
    """A fit, significance or limit did not converge; the message says which and on what."""
