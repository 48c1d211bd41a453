"""Make MMF 1.0.0rc10 import and run on Python 3.11, torch 2.x, transformers 5.x.

Cheatsheet::

    import mmf_fashion.bridge
    mmf_fashion.bridge.install()   # before `import mmf`; idempotent
    import mmf                      # now works, and setup_imports() loads our plugin

The installed start-up hook (mmf_fashion_hook.pth -> mmf_fashion.bridge.hook)
calls install() on the first `import mmf` of any interpreter, so plain
`mmf_run`, torchrun workers and spawned processes all get it. What is patched
and why: mmf_fashion/bridge/patches.py and legacy.py; `applied()` lists the
patches that were needed in this process.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import List

_INSTALLED = None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped, patches):
        self._wrapped = wrapped
        self._patches = patches

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        self._wrapped.exec_module(module)
        for apply_patch in self._patches:
            apply_patch(module)

    def __getattr__(self, name):
        return getattr(self._wrapped, name)


class PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds modules with the other finders and patches them right after they execute."""

    def __init__(self, patches):
        self.patches = patches

    def find_spec(self, fullname, path=None, target=None):
        patches = self.patches.get(fullname)
        if not patches:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patches)
                return spec
        return None


def install() -> PatchingFinder:
    """Install the alias finder and the patching finder (once per process)."""
    global _INSTALLED
    if _INSTALLED is not None:
        return _INSTALLED
    from mmf_fashion.bridge.legacy import LegacyAliasFinder
    from mmf_fashion.bridge.patches import PATCHES

    finder = PatchingFinder(PATCHES)
    sys.meta_path.insert(0, LegacyAliasFinder())
    sys.meta_path.insert(0, finder)
    # modules imported before install() (e.g. transformers by our encoders) are patched now
    for name, patches in PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            for apply_patch in patches:
                apply_patch(module)
    _INSTALLED = finder
    return finder


def applied() -> List[str]:
    from mmf_fashion.bridge.patches import APPLIED

    return list(APPLIED)
