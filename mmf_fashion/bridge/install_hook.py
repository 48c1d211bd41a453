"""Write the start-up hook (.pth) into this interpreter's site-packages.

Cheatsheet::

    python -m mmf_fashion.bridge.install_hook            # install / refresh
    python -m mmf_fashion.bridge.install_hook --remove

`pip install .` ships the same file through setup.py; an editable install
(`pip install -e .`) leaves .pth files out, so `make setup` runs this.
"""

from __future__ import annotations

import argparse
import os
import sysconfig

HOOK_NAME = "mmf_fashion_hook.pth"
# One line that starts with `import` (site.py executes those); it stays cheap
# and does nothing when the package is not importable.
HOOK_LINE = (
    "import importlib.util as _mmf_fashion_util; "
    '_mmf_fashion_util.find_spec("mmf_fashion") and __import__("mmf_fashion.bridge.hook")\n'
)


def hook_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], HOOK_NAME)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remove", action="store_true")
    args = parser.parse_args(argv)
    path = hook_path()
    if args.remove:
        if os.path.exists(path):
            os.remove(path)
        print(f"removed {path}")
        return 0
    with open(path, "w") as f:
        f.write(HOOK_LINE)
    print(f"installed {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
