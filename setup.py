"""Build step for mmf-fashion; all metadata lives in pyproject.toml.

This file only adds to build_py: it writes the start-up hook
(mmf_fashion_hook.pth) at the wheel's root and copies projects/ into
mmf_fashion/projects. An editable install leaves the .pth out, so
`make setup` runs `python -m mmf_fashion.bridge.install_hook` as well.
"""

import importlib.util
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _hook_module():
    # Loaded from its file: the build backend does not put the source tree on
    # sys.path, and importing the package here must not need its dependencies.
    path = os.path.join(HERE, "mmf_fashion", "bridge", "install_hook.py")
    spec = importlib.util.spec_from_file_location("_mmf_fashion_install_hook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithHook(build_py):
    """Also ship the start-up hook at the wheel's root and the project configs."""

    def run(self):
        super().run()
        hook = _hook_module()
        with open(os.path.join(self.build_lib, hook.HOOK_NAME), "w") as f:
            f.write(hook.HOOK_LINE)
        target = os.path.join(self.build_lib, "mmf_fashion", "projects")
        if os.path.isdir(target):
            shutil.rmtree(target)
        shutil.copytree(os.path.join(HERE, "projects"), target)


setup(cmdclass={"build_py": BuildWithHook})
