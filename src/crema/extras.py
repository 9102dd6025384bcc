"""crema's optional dependencies (``pip install 'crema[EXTRA]'``), checked before a command does any work.

The base install runs every command that does not train (inference runs on onnxruntime; ``onnx``
reads model contracts and is a base dependency). Training needs torch, the ``train`` extra.
"""

from __future__ import annotations

import importlib

from crema.schema import ConfigError


class MissingExtraError(ConfigError):
    """A command needs an optional dependency that is not installed; the message names the extra.

    A :class:`~crema.schema.ConfigError`, so the ``crema`` command reports it in one line with exit 2.
    """


def require_torch(command: str) -> None:
    """Import torch or raise :class:`MissingExtraError` telling the user to ``install crema[train]``."""
    try:
        importlib.import_module("torch")
    except ImportError as err:
        raise MissingExtraError(f"{command} trains with torch, which is not installed ({err}); "
                                "install crema[train]: pip install 'crema[train]'") from None
