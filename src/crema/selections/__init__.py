"""NanoAODv12 object and event selections, pure functions over NanoEvents collections."""
