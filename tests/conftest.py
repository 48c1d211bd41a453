"""Test-suite set-up: the MMF bridge first, then MMF's registry with our plugin."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mmf_fashion.bridge  # noqa: E402

mmf_fashion.bridge.install()

import torch  # noqa: E402

# the shared data fixtures (synthetic_world, fresh_world) for every test module, without imports
pytest_plugins = ["fixtures_data"]

# at most 2 threads, unless the caller chose (OMP_NUM_THREADS=1 must really run on one)
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (subprocess mmf_run, torchrun)")
    config.addinivalue_line("markers", "mmf_compat: also run against MMF main (make test-mmf-main)")


@pytest.fixture(scope="session")
def mmf_registry():
    """MMF's registry with every mmf_fashion registration loaded, and a writer."""
    from mmf.common.registry import registry
    from mmf.utils.configuration import Configuration
    from mmf.utils.env import setup_imports

    import mmf_fashion.plugin

    setup_imports()
    mmf_fashion.plugin.register_all()
    if registry.get("config", no_warning=True) is None:
        registry.register("config", Configuration().get_config())
    from mmf_fashion.utils.run_log import run_writer

    run_writer(registry.get("config"))  # registers MMF's writer when none is
    return registry


@pytest.fixture
def restore_mmf_state(mmf_registry):
    """Commands and runtime.load_config register their config as MMF's global one,
    as mmf_run does; put back what the rest of the session had."""
    keys = ("config", "configuration", "current_device")
    saved = {key: mmf_registry.get(key, no_warning=True) for key in keys}
    yield mmf_registry
    for key, value in saved.items():
        if value is None:
            mmf_registry.unregister(key)
        else:
            mmf_registry.register(key, value)
