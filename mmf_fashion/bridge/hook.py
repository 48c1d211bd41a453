"""Interpreter start-up hook: arm the MMF bridge lazily.

The installed `mmf_fashion_hook.pth` runs `import mmf_fashion.bridge.hook`
at every interpreter start. That must stay cheap (stdlib only): it only puts
a finder on sys.meta_path that waits for the first `import mmf`. Programs
that never import mmf pay a few microseconds and import neither torch nor
transformers.
"""

import sys


class _ArmOnFirstMMFImport:
    """Installs the bridge right before `mmf` (or any mmf.* module) is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "mmf" and not fullname.startswith(("mmf.", "mmf_cli")):
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        from mmf_fashion.bridge import install

        try:
            finder = install()
        except Exception:
            # e.g. an unsupported MMF version: stay armed so every later
            # `import mmf` raises the same clear error instead of running unpatched
            sys.meta_path.insert(0, self)
            raise
        # The patching finder installed by install() must handle this very
        # import too, so ask it directly instead of returning None.
        return finder.find_spec(fullname, path, target)


def arm() -> None:
    if "mmf" in sys.modules:
        from mmf_fashion.bridge import install

        install()
        return
    if not any(isinstance(f, _ArmOnFirstMMFImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ArmOnFirstMMFImport())


arm()
