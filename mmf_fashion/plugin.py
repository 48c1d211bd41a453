"""Explicit registration of everything mmf-fashion adds to MMF's registry.

Cheatsheet::

    import mmf_fashion.plugin
    mmf_fashion.plugin.register_all()     # idempotent; setup_imports() calls it
    mmf_fashion.plugin.registered_names("model")

Every module under the packages below that registers something is imported
here by walking the package, so a new model file or builder folder needs no
edit of this file; tests/test_registry.py walks every registered name.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, List

REGISTERING_PACKAGES = (
    "mmf_fashion.processors",
    "mmf_fashion.datasets.builders",
    "mmf_fashion.metrics",
    "mmf_fashion.models",
    "mmf_fashion.trainers",
)

_DONE = False


def _walk(package_name: str) -> List[str]:
    try:
        package = importlib.import_module(package_name)
    except ModuleNotFoundError as error:
        if error.name and package_name.startswith(error.name):
            return []
        raise
    names = []
    for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
        names.append(info.name)
    return names


def register_all() -> None:
    global _DONE
    if _DONE:
        return
    import mmf_fashion.bridge

    mmf_fashion.bridge.install()
    for package_name in REGISTERING_PACKAGES:
        for module_name in _walk(package_name):
            importlib.import_module(module_name)
    _DONE = True


_KINDS = {
    "model": "model_name_mapping",
    "builder": "builder_name_mapping",
    "metric": "metric_name_mapping",
    "processor": "processor_name_mapping",
    "trainer": "trainer_name_mapping",
    "optimizer": "optimizer_name_mapping",
    "scheduler": "scheduler_name_mapping",
}


def registered_names(kind: str) -> List[str]:
    from mmf.common.registry import registry

    return sorted(registry.mapping[_KINDS[kind]].keys())


def ours() -> Dict[str, Dict[str, str]]:
    """{kind: {name: first docstring line}} for what this package registered."""
    from mmf.common.registry import registry

    register_all()
    result: Dict[str, Dict[str, str]] = {}
    for kind, key in _KINDS.items():
        for name, obj in registry.mapping[key].items():
            module = getattr(obj, "__module__", "") or ""
            if module.startswith("mmf_fashion"):
                doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
                result.setdefault(kind, {})[name] = doc[0] if doc else ""
    return result
