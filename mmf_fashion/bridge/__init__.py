"""Make MMF 1.0.0rc10 and MMF main (1.0.0rc12) import and run on Python 3.11, torch 2.x, transformers 5.x.

Cheatsheet::

    import mmf_fashion.bridge
    mmf_fashion.bridge.install()   # before `import mmf`; idempotent
    import mmf                      # now works, and setup_imports() loads our plugin

The installed start-up hook (mmf_fashion_hook.pth -> mmf_fashion.bridge.hook)
calls install() on the first `import mmf` of any interpreter, so plain
`mmf_run`, torchrun workers and spawned processes all get it. What is patched
and why: mmf_fashion/bridge/patches.py and legacy.py; `applied()` lists the
patches that were needed in this process (`mmf-fashion info --patches`).
install() refuses an MMF other than SUPPORTED_MMF_VERSIONS (the PyPI release
1.0.0rc10 and MMF main, 1.0.0rc12, installed from source) with
UnsupportedMMFVersion, and a patch that cannot read the rc10 source it checks
raises patches.PatchProbeError instead of skipping.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import sys
from typing import List, Optional

_INSTALLED = None
# The patches read and replace rc10's own code: another MMF is not safe to patch.
SUPPORTED_MMF_VERSIONS = ("1.0.0rc10", "1.0.0rc12")


class UnsupportedMMFVersion(RuntimeError):
    """The installed MMF is not one the bridge's patches were written for."""


def installed_mmf_version() -> Optional[str]:
    """MMF's version without importing mmf (that import needs the bridge first).

    None when MMF is not installed at all."""
    try:
        return importlib.metadata.version("mmf")
    except importlib.metadata.PackageNotFoundError:
        pass
    # a source checkout on sys.path has no metadata: read mmf/version.py
    spec = importlib.util.find_spec("mmf")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "version.py")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                found = re.search(r"__version__\s*=\s*[\"']([^\"']+)[\"']", f.read())
            if found:
                return found.group(1)
    return "unknown"


def check_mmf_version(version: Optional[str] = None) -> None:
    """Raise UnsupportedMMFVersion unless MMF is absent or a supported version."""
    version = installed_mmf_version() if version is None else version
    if version is None or version in SUPPORTED_MMF_VERSIONS:
        return
    raise UnsupportedMMFVersion(
        f"mmf-fashion supports MMF {' and '.join(SUPPORTED_MMF_VERSIONS)}; this environment has "
        f"mmf {version}. Its compatibility patches (mmf_fashion/bridge) are written against those "
        f"versions' code. Install the PyPI release with: pip install --no-deps mmf==1.0.0rc10 "
        f"(make setup does this), or MMF main (1.0.0rc12) from its source: "
        f"make setup MMF=main MMF_SOURCE=<MMF source folder or archive>."
    )


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


def _quiet_known_upstream_warnings() -> None:
    """Warnings MMF main's own imports print at every start, about code that is not ours:
    pytorch-lightning 1.6 importing pkg_resources, and MMF's defaults.yaml writing
    `${oc.env:MMF_LOG_DIR,}` (an empty default omegaconf 2.4 asks to quote)."""
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message="In the sequence `MMF_", category=UserWarning)


def install() -> PatchingFinder:
    """Install the alias finder and the patching finder (once per process)."""
    global _INSTALLED
    if _INSTALLED is not None:
        return _INSTALLED
    check_mmf_version()
    _quiet_known_upstream_warnings()
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
