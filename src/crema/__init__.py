"""crema: machine-learning models inside coffea processors for CMS NanoAODv12 analyses."""

__version__ = "0.1.0"
