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
    for needle in ("defaults.yaml", "oc.env", "collections.abc.Mapping", "AdamW", "params passed to the metric", "LOCAL_RANK" if "mmf_cli.run" in sys.modules else "distributed"):
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
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode != 0
    assert "Unknown model 'not_a_model'" in result.stderr
    assert "visual_bert" in result.stderr  # the message lists what is registered


def test_legacy_transformers_paths_alias_the_new_modules(mmf_registry):
    import torch
    from transformers.modeling_bert import BertLayerNorm, BertEmbeddings
    from transformers.models.bert.modeling_bert import BertEmbeddings as Real

    assert BertEmbeddings is Real
    assert BertLayerNorm is torch.nn.LayerNorm
