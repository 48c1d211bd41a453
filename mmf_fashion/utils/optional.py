"""Optional dependencies: imported where used, with the extra that installs them named."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"faiss": "index", "matplotlib": "plot", "nltk": "attributes", "tensorboard": "tensorboard"}


def require(module: str, purpose: str) -> ModuleType:
    """import `module`, or an ImportError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {top}, which is not installed: pip install 'mmf-fashion[{EXTRAS[top]}]'"
        ) from error
