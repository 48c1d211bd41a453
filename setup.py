"""mmf-fashion: fashion vision-and-language models for MMF.

MMF itself (1.0.0rc10) and torch are NOT in install_requires: rc10 pins
torch==1.5.0 and friends, which makes pip's resolver fail on Python 3.11.
The Makefile installs torch and `mmf==1.0.0rc10 --no-deps` first (README).
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    with open(os.path.join(HERE, "requirements", name)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


class BuildWithHook(build_py):
    """Also ship the start-up hook at the wheel's root and the project configs."""

    def run(self):
        super().run()
        from mmf_fashion.bridge.install_hook import HOOK_LINE, HOOK_NAME

        with open(os.path.join(self.build_lib, HOOK_NAME), "w") as f:
            f.write(HOOK_LINE)
        target = os.path.join(self.build_lib, "mmf_fashion", "projects")
        if os.path.isdir(target):
            shutil.rmtree(target)
        shutil.copytree(os.path.join(HERE, "projects"), target)


setup(
    name="mmf-fashion",
    version="0.1.0",
    description="Fashion vision-and-language models (FashionViL, FashionBERT, X-VLM, COTS, ALIGN) for MMF",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["mmf_fashion", "mmf_fashion.*"]),
    package_data={"mmf_fashion": ["configs/*.yaml", "models/configs/*.yaml", "datasets/builders/*/*.yaml", "data/*.json"]},
    install_requires=read_requirements("base.txt"),
    extras_require={"test": read_requirements("test.txt")},
    entry_points={"console_scripts": ["mmf-fashion=mmf_fashion.cli.main:main"]},
    cmdclass={"build_py": BuildWithHook},
)
