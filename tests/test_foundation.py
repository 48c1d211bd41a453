"""The MMF bridge, the start-up hook and the packaging promises."""

import os
import subprocess
import sys

import pytest

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, **kwargs):
    return subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


def test_startup_hook_is_installed_and_imports_nothing_heavy():
    result = run_python(
        "import sys; print('mmf_fashion.bridge.hook' in sys.modules, 'torch' in sys.modules, "
        "'transformers' in sys.modules, 'mmf' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False", "False"]


def test_plain_import_mmf_works_through_the_hook_and_loads_our_plugin():
    code = (
        "import mmf\n"
        "from mmf.utils.env import setup_imports\n"
        "setup_imports()\n"
        "from mmf.common.registry import registry\n"
        "print(registry.get_trainer_class('fashion_trainer').__module__)\n"
        "import mmf_fashion.bridge as b; print(len(b.applied()))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    module, count = result.stdout.split()[-2:]
    assert module == "mmf_fashion.trainers.fashion_trainer"
    assert int(count) >= 8


def test_patches_fix_the_rc10_behaviours(mmf_registry):
    import mmf_fashion.bridge as bridge

    applied = "\n".join(bridge.applied())
    for needle in (
        "defaults.yaml",
        "oc.env",
        "collections.abc.Mapping",
        "AdamW",
        "params passed to the metric",
        "LOCAL_RANK" if "mmf_cli.run" in sys.modules else "distributed",
    ):
        assert needle in applied, needle
    from mmf.utils import distributed

    assert distributed.get_world_size() == 1 and distributed.is_master()


def test_default_config_resolves_and_has_every_key_our_trainer_reads(mmf_registry):
    from mmf.utils.configuration import Configuration

    config = Configuration().get_config()
    assert config.training.trainer == "fashion_trainer"
    assert config.env.data_dir  # oc.env interpolation resolves
    for key in ("amp", "update_frequency", "on_nonfinite_loss", "clip_gradients", "log_sample_ids"):
        assert key in config.training
    assert "allow_unsafe_load" in config.checkpoint


def test_includes_resolve_from_our_project_roots(tmp_path, mmf_registry):
    from mmf.utils.configuration import load_yaml

    base = tmp_path / "base.yaml"
    base.write_text("training:\n  batch_size: 7\n")
    user = tmp_path / "sub" / "user.yaml"
    user.parent.mkdir()
    user.write_text("includes:\n  - ../base.yaml\ntraining:\n  max_updates: 3\n")
    merged = load_yaml(str(user))
    assert merged.training.batch_size == 7 and merged.training.max_updates == 3
    with pytest.raises(FileNotFoundError, match="Tried"):
        load_yaml(str(tmp_path / "missing.yaml"))


def test_unknown_model_name_lists_registered_models():
    result = subprocess.run(
        [PYTHON, "-c", "from mmf_cli.run import run; run()", "model=not_a_model", "dataset=fashiongen"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Unknown model 'not_a_model'" in result.stderr
    assert "visual_bert" in result.stderr  # the message lists what is registered


def test_legacy_transformers_paths_alias_the_new_modules(mmf_registry):
    import torch
    from transformers.modeling_bert import BertEmbeddings, BertLayerNorm
    from transformers.models.bert.modeling_bert import BertEmbeddings as Real

    assert BertEmbeddings is Real
    assert BertLayerNorm is torch.nn.LayerNorm


def _packaging_metadata():
    """(requirements from pyproject.toml, {extra: requirements}, {name: pinned version})."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    required = [Requirement(line) for line in project["dependencies"]]
    extras = {name: [Requirement(line) for line in lines] for name, lines in project["optional-dependencies"].items()}
    pins = {}
    with open(os.path.join(REPO, "requirements", "constraints.txt")) as f:
        for raw in f:
            line = raw.split("#")[0].strip()
            if line:
                name, _, version = line.partition("==")
                assert version, f"constraints.txt: {line!r} is not an exact pin"
                pins[canonicalize_name(name)] = version.strip()
    return required, extras, pins


def test_metadata_has_ranges_and_every_tested_pin_lies_inside_them():
    from packaging.utils import canonicalize_name

    required, extras, pins = _packaging_metadata()
    assert {"index", "plot", "attributes", "tensorboard", "test"} <= set(extras)
    everything = required + [req for reqs in extras.values() for req in reqs]
    for req in everything:
        # an exact pin in the metadata would stop the package installing beside anything else
        assert all(spec.operator not in ("==", "===") for spec in req.specifier), str(req)
        assert req.specifier, f"{req}: give a range (and pin the tested version in constraints.txt)"
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no tested version in requirements/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    assert "mmf" not in {canonicalize_name(req.name) for req in everything}  # installed with --no-deps


def test_a_missing_optional_dependency_names_its_extra(monkeypatch):
    from mmf_fashion.utils.optional import require

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: its import fails
    with pytest.raises(ImportError, match=r"plotting needs matplotlib.*pip install 'mmf-fashion\[plot\]'"):
        require("matplotlib", "plotting")
    assert require("json", "reading").dumps([]) == "[]"


def test_null_on_the_command_line_is_none_as_in_yaml(restore_mmf_state):
    from mmf_fashion.runtime import load_config

    config = load_config(
        "projects/fashionvil/configs/itr.yaml",
        "fashionvil",
        "fashiongen",
        ["model_config.fashionvil.image_encoder.pretrained=null", "checkpoint.resume_file=~", "training.seed=7"],
    )
    assert config.model_config.fashionvil.image_encoder.pretrained is None
    assert config.checkpoint.resume_file is None
    assert config.training.seed == 7  # other values decode as before


def test_project_base_config_repeats_our_defaults_and_every_project_config_includes_it():
    """projects/base.yaml names what our configs rely on, so MMF main's own
    defaults.yaml cannot change it; on rc10 (our defaults) it must change nothing."""
    from omegaconf import OmegaConf

    from mmf_fashion.resources import DEFAULTS_YAML

    base = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "projects", "base.yaml")))
    defaults = OmegaConf.to_container(OmegaConf.load(DEFAULTS_YAML))

    def leaves(mapping, prefix=""):
        for key, value in mapping.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    flat_defaults = dict(leaves(defaults))
    for key, value in leaves(base):
        assert flat_defaults.get(key, "<missing>") == value, key

    # every project config reaches base.yaml through its includes (overlays such as
    # paper.yaml, which only override, say so in their first line and are left out)
    def reaches_base(path, seen=()):
        config = OmegaConf.load(path)
        for include in config.get("includes", []) or []:
            if include == "projects/base.yaml":
                return True
            target = os.path.normpath(os.path.join(os.path.dirname(path), include))
            if include.startswith("projects/"):
                target = os.path.join(REPO, include)
            if target not in seen and os.path.isfile(target) and reaches_base(target, seen + (target,)):
                return True
        return False

    missing = []
    for folder, _, files in os.walk(os.path.join(REPO, "projects")):
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.endswith(".yaml") or name == "base.yaml" or "as an override" in open(path).readline():
                continue
            if not reaches_base(path):
                missing.append(os.path.relpath(path, REPO))
    assert not missing, f"project configs that do not include projects/base.yaml: {missing}"
