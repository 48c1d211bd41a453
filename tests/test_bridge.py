"""The bridge refuses what it was not written for, loudly.

An MMF other than 1.0.0rc10 or 1.0.0rc12 (MMF main) stops at install() with one message naming the
supported versions; a patch that cannot read the rc10 source it checks raises
instead of skipping; the whole-function replacements say so and why.
"""

import importlib.metadata
import os
import subprocess
import sys
import types

import pytest

import mmf_fashion.bridge as bridge
from mmf_fashion.bridge import patches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_install_refuses_an_unknown_mmf_version(monkeypatch):
    monkeypatch.setattr(bridge, "_INSTALLED", None)
    monkeypatch.setattr(bridge, "installed_mmf_version", lambda: "1.0.0rc11")
    meta_path_before = list(sys.meta_path)
    with pytest.raises(bridge.UnsupportedMMFVersion) as caught:
        bridge.install()
    message = str(caught.value)
    assert "supports MMF 1.0.0rc10 and 1.0.0rc12" in message
    assert "mmf 1.0.0rc11" in message
    assert "pip install --no-deps mmf==1.0.0rc10" in message and "make setup MMF=main" in message
    # refused before anything was put on the import path
    assert sys.meta_path == meta_path_before


def test_supported_or_absent_mmf_passes_the_gate():
    bridge.check_mmf_version("1.0.0rc10")
    bridge.check_mmf_version("1.0.0rc12")
    assert bridge.installed_mmf_version() in bridge.SUPPORTED_MMF_VERSIONS
    with pytest.raises(bridge.UnsupportedMMFVersion, match="mmf 0.9"):
        bridge.check_mmf_version("0.9")


def test_version_of_a_source_checkout_is_read_from_version_py(tmp_path, monkeypatch):
    package = tmp_path / "mmf"
    package.mkdir()
    (package / "version.py").write_text('__version__ = "1.0.0rc11"\n')

    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    spec = types.SimpleNamespace(submodule_search_locations=[str(package)])
    monkeypatch.setattr(bridge.importlib.metadata, "version", no_metadata)
    monkeypatch.setattr(bridge.importlib.util, "find_spec", lambda name: spec if name == "mmf" else None)
    assert bridge.installed_mmf_version() == "1.0.0rc11"
    with pytest.raises(bridge.UnsupportedMMFVersion, match="1.0.0rc11"):
        bridge.check_mmf_version()


def test_the_startup_hook_keeps_refusing_an_unknown_version():
    # a fresh interpreter whose mmf reports another version: every `import mmf` gets the message
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '2.0.0' if name == 'mmf' else real(name)\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        import mmf\n"
        "        print('imported')\n"
        "    except Exception as error:\n"
        "        print(type(error).__name__)\n"
    )
    from mmf_fashion.bridge.install_hook import hook_path

    if not os.path.isfile(hook_path()):
        pytest.skip("the start-up hook is not installed in this interpreter (make setup installs it)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["UnsupportedMMFVersion", "UnsupportedMMFVersion"]


def _fake_checkpoint_module():
    class Checkpoint:
        def save_config(self):
            return "rc10"

    return types.SimpleNamespace(Checkpoint=Checkpoint), Checkpoint.save_config


def test_a_patch_whose_source_probe_fails_raises(monkeypatch):
    def no_source(obj):
        raise OSError("could not get source code")

    monkeypatch.setattr(patches.inspect, "getsource", no_source)
    module, original = _fake_checkpoint_module()
    with pytest.raises(patches.PatchProbeError) as caught:
        patches.config_to_yaml(module)
    message = str(caught.value)
    assert "Checkpoint.save_config" in message and "could not get source code" in message
    assert "mmf==1.0.0rc10" in message
    assert module.Checkpoint.save_config is original  # nothing half-patched


def test_source_probe_of_an_object_without_source_raises():
    with pytest.raises(patches.PatchProbeError, match="cannot read the source of"):
        patches._source(len)


def test_whole_function_replacements_say_so_and_why(mmf_registry):
    applied = bridge.applied()
    replaced = [line for line in applied if "whole function replaced - " in line]
    targets = [line.split(":")[0] for line in replaced]
    for target in ("Configuration._register_resolvers", "configuration.load_yaml"):
        assert target in targets, applied
    # every one carries a reason after the marker
    assert all(len(line.split("whole function replaced - ", 1)[1]) > 20 for line in replaced)


def test_unknown_model_message_lists_names_without_the_plugin_module(mmf_registry):
    from mmf.common.registry import registry

    names = patches._registered_names(registry, "model_name_mapping")
    assert "fashionvil" in names.split(", ")
