"""Where the package's own files live (defaults YAML, project configs).

Project configs are found whether the package runs from a source checkout
(projects/ next to mmf_fashion/) or from an installed wheel (copied into
mmf_fashion/projects by setup.py).
"""

from __future__ import annotations

import os
from typing import List, Optional

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULTS_YAML = os.path.join(PACKAGE_DIR, "configs", "defaults.yaml")


def resource_roots() -> List[str]:
    """Directories against which relative config paths are tried, in order."""
    roots = []
    source_checkout = os.path.dirname(PACKAGE_DIR)
    if os.path.isdir(os.path.join(source_checkout, "projects")):
        roots.append(source_checkout)
    roots.append(PACKAGE_DIR)  # installed wheel: mmf_fashion/projects
    return roots


def _mmf_root() -> Optional[str]:
    import importlib.util

    spec = importlib.util.find_spec("mmf")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def find_include(path: str, including_file: Optional[str] = None) -> str:
    """Resolve a YAML path: as given (absolute or from the working directory),
    then relative to the MMF root, the including file, and our roots."""
    path = os.path.expanduser(str(path))
    candidates = [os.path.abspath(path)]
    if not os.path.isabs(path):
        mmf_root = _mmf_root()
        if mmf_root:
            candidates.append(os.path.join(mmf_root, path))
        if including_file:
            candidates.append(os.path.join(os.path.dirname(including_file), path))
        candidates.extend(os.path.join(root, path) for root in resource_roots())
    if including_file:
        # MMF semantics: an include is first relative to the mmf root, then the including file
        candidates = candidates[1:] + candidates[:1]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    tried = "\n  ".join(dict.fromkeys(candidates))
    raise FileNotFoundError(f"Config file '{path}' not found. Tried:\n  {tried}")
