"""Post-import patches for MMF 1.0.0rc10 on Python 3.11 / torch 2 / omegaconf 2.4.

Each patch names the rc10 behaviour it fixes and checks that the behaviour is
present before it changes anything, so a newer MMF that fixed it is left
alone. Patches run right after their module is executed (see
mmf_fashion.bridge.PatchingFinder), before any other module can copy the
patched names with `from ... import ...`.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import warnings
from typing import Callable, Dict, List

PATCHES: Dict[str, List[Callable]] = {}
APPLIED: List[str] = []
# what MMF's setup_imports() also calls; named here rather than imported so
# the bridge never imports the plugin (the plugin imports the bridge)
PLUGIN_REGISTRATION = "mmf_fashion.plugin:register_all"


def patch(module_name: str):
    def register(function):
        PATCHES.setdefault(module_name, []).append(function)
        return function

    return register


class PatchProbeError(RuntimeError):
    """A patch could not read the rc10 source it checks before changing anything."""


def _source(obj) -> str:
    # Each patch decides from the source whether rc10's behaviour is there.
    # Without the source it cannot tell, and skipping would leave MMF broken
    # far from here, so say so now.
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as error:
        where = getattr(obj, "__module__", None) or getattr(obj, "__name__", "?")
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
        raise PatchProbeError(
            f"mmf_fashion.bridge cannot read the source of {where}.{name} ({error}), so it cannot "
            f"tell whether MMF 1.0.0rc10's behaviour it patches is there. Install MMF with its "
            f".py files: pip install --no-deps --force-reinstall mmf==1.0.0rc10"
        ) from error


def _record(name: str) -> None:
    APPLIED.append(name)


def _record_replacement(target: str, why: str) -> None:
    # whole-function replacements are the patches most likely to drift from
    # MMF's code: `mmf-fashion info --patches` shows them with their reason
    _record(f"{target}: whole function replaced - {why}")


def _registered_names(registry, mapping_key: str) -> str:
    # read MMF's registry directly, so the bridge does not import mmf_fashion.plugin
    return ", ".join(sorted(registry.mapping[mapping_key].keys()))


# ---------------------------------------------------------------- transformers
@patch("transformers.optimization")
def adamw_from_torch(module):
    """rc10 imports transformers.optimization.AdamW, removed in transformers 4.x."""
    if not hasattr(module, "AdamW"):
        import torch

        module.AdamW = torch.optim.AdamW
        _record("transformers.optimization.AdamW -> torch.optim.AdamW")


# ---------------------------------------------------------------- torchvision
@patch("torchvision.io")
def read_video_removed(module):
    """MMF main's setup_imports() imports every builder; charades imports
    torchvision.io.read_video, which torchvision 0.29 removed. Keep the import
    working and fail only if a video is actually read."""
    if hasattr(module, "read_video"):
        return

    def read_video(*args, **kwargs):
        raise RuntimeError(
            "torchvision.io.read_video was removed from torchvision (this one is "
            f"{getattr(module, '__version__', '?')}); MMF's video datasets (charades) need an "
            "older torchvision. mmf-fashion does not use it."
        )

    module.read_video = read_video
    _record("torchvision.io.read_video: removed upstream; an import-time placeholder that raises when called")


# ---------------------------------------------------------------- MMF main start-up
@patch("mmf.utils.patch")
def lazy_transformers_aliases(module):
    """MMF main's `import mmf` calls patch_transformers(), which imports every
    model package of transformers (about 10 s at each start) to alias
    transformers.<module> to transformers.models.<model>.<module>. The modules
    MMF imports by those old paths (modeling_bert, configuration_bert,
    modeling_auto, configuration_auto, tokenization_auto) are served on demand by
    the bridge's alias finder (legacy.py), as for rc10."""
    original = getattr(module, "patch_transformers", None)
    if (
        original is None
        or getattr(original, "__mmf_fashion__", False)
        or "transformers.models" not in _source(original)
    ):
        return

    def patch_transformers(log_incompatible=False):
        import transformers

        if transformers.__spec__ is None:  # what MMF's version also guards: pytorch-lightning's find_spec
            transformers.__spec__ = "MISSING"

    patch_transformers.__mmf_fashion__ = True
    module.patch_transformers = patch_transformers
    _record("patch.patch_transformers: old transformers module paths served lazily by the bridge's alias finder")


# ---------------------------------------------------------------- configuration
@patch("mmf.utils.configuration")
def own_defaults_file(module):
    """rc10's sdist ships no configs/defaults.yaml: point MMF at ours."""
    from mmf_fashion.resources import DEFAULTS_YAML

    if not os.path.isfile(module.get_default_config_path()):
        module.get_default_config_path = lambda: DEFAULTS_YAML
        _record_replacement(
            "configuration.get_default_config_path", "rc10's file is missing; returns mmf_fashion/configs/defaults.yaml"
        )


# top-level keys of our defaults that MMF main must not see: it copies even a
# null `learning_rate` into optimizer.params.lr (rc10 only copies a set one)
_RC10_ONLY_DEFAULTS = ("learning_rate",)


@patch("mmf.utils.configuration")
def our_keys_beside_mmf_defaults(module):
    """MMF main ships its own defaults.yaml, so own_defaults_file does nothing
    there and keys only we define (training.amp.*, training.on_nonfinite_loss,
    checkpoint.allow_unsafe_load, ...) would be unknown, and rejected as
    command-line overrides. Add ours under MMF's: on a key both define, MMF's
    value stays (our project configs set what they rely on, through
    projects/base.yaml)."""
    from mmf_fashion.resources import DEFAULTS_YAML

    mmf_defaults = module.get_default_config_path()
    original = module.Configuration._build_default_config
    if (
        getattr(original, "__mmf_fashion__", False)
        or os.path.abspath(mmf_defaults) == os.path.abspath(DEFAULTS_YAML)
        or not os.path.isfile(mmf_defaults)
    ):
        return
    OmegaConf = module.OmegaConf

    def _build_default_config(self):
        theirs = original(self)
        ours = OmegaConf.load(DEFAULTS_YAML)
        for key in _RC10_ONLY_DEFAULTS + ("includes",):
            ours.pop(key, None)
        return OmegaConf.merge(ours, theirs)

    _build_default_config.__mmf_fashion__ = True
    module.Configuration._build_default_config = _build_default_config
    _record("Configuration._build_default_config: MMF's defaults.yaml, plus the keys only mmf_fashion defines")


@patch("mmf.utils.configuration")
def null_on_the_command_line(module):
    """MMF decodes a command-line value with literal_eval, which knows None but not
    YAML's null: `key=null` arrived as the string "null" (e.g. a weights path named
    'null'). Decode YAML's null spellings as None, as the same value in a YAML file is.
    rc10 has the decoder as Configuration._decode_value(self, value), main as the
    module function _decode_value(value)."""
    nulls = ("null", "Null", "NULL", "~")
    if hasattr(module.Configuration, "_decode_value"):  # rc10
        original = module.Configuration._decode_value
        if getattr(original, "__mmf_fashion__", False) or original(None, "null") is None:
            return

        def method(self, value):
            if isinstance(value, str) and value.strip() in nulls:
                return None
            return original(self, value)

        method.__mmf_fashion__ = True
        module.Configuration._decode_value = method
        where = "Configuration._decode_value"
    else:  # main
        original = module._decode_value
        if getattr(original, "__mmf_fashion__", False) or original("null") is None:
            return

        def function(value):
            if isinstance(value, str) and value.strip() in nulls:
                return None
            return original(value)

        function.__mmf_fashion__ = True
        module._decode_value = function
        where = "configuration._decode_value"
    _record(f"{where}: key=null / key=~ on the command line is None")


@patch("mmf.utils.configuration")
def includes_from_our_roots(module):
    """`includes:` resolve against the mmf root, then the including file; also
    look in mmf_fashion's roots so users can include projects/<model>/... by the
    same relative path from anywhere."""
    from mmf_fashion.resources import find_include

    original = module.load_yaml
    if getattr(original, "__mmf_fashion__", False):
        return
    OmegaConf = module.OmegaConf

    def load_yaml(f):
        if "://" in str(f):  # an iopath URI (MMF main's PathManager): MMF's own loader
            return original(f)
        path = find_include(f, including_file=None)
        mapping = OmegaConf.load(path)
        if mapping is None:
            mapping = OmegaConf.create()
        includes = mapping.get("includes", [])
        if not isinstance(includes, collections.abc.Sequence) or isinstance(includes, str):
            raise AttributeError(f"{path}: 'includes' must be a list, {type(includes)} given")
        merged = OmegaConf.create()
        for include in includes:
            merged = OmegaConf.merge(merged, load_yaml(find_include(include, including_file=path)))
        mapping.pop("includes", None)
        return OmegaConf.merge(merged, mapping)

    load_yaml.__mmf_fashion__ = True
    module.load_yaml = load_yaml
    _record_replacement(
        "configuration.load_yaml", "`includes:` also resolved in mmf_fashion's roots (projects/<model>/...)"
    )


@patch("mmf.utils.configuration")
def resolvers_for_omegaconf_2_1(module):
    """MMF (rc10 and main) calls OmegaConf.clear_resolvers(), which also drops
    omegaconf's own oc.env resolver, then registers without replace=True."""
    OmegaConf = module.OmegaConf
    if "clear_resolvers" not in _source(module.Configuration._register_resolvers):
        return

    # omegaconf 2.1-2.3 name it register_new_resolver; 2.4 renamed it back to register_resolver
    register = OmegaConf.register_resolver
    if "replace" not in inspect.signature(register).parameters:
        register = OmegaConf.register_new_resolver

    def _register_resolvers(self):
        import torch

        device_count = max(1, torch.cuda.device_count())
        register("device_count", lambda: device_count, replace=True)
        register("resolve_cache_dir", module.resolve_cache_dir, replace=True)
        register("resolve_dir", module.resolve_dir, replace=True)

    module.Configuration._register_resolvers = _register_resolvers
    _record_replacement(
        "Configuration._register_resolvers",
        "MMF (rc10 and main) clears omegaconf's oc.env resolver and registers without replace=True",
    )


@patch("mmf.utils.configuration")
def missing_keys_are_none(module):
    """omegaconf >= 2.1 raises on missing keys where rc10 expects None
    (opts.config, config.model, config.dataset(s))."""
    original = module.Configuration._build_opt_list
    if getattr(original, "__mmf_fashion__", False):
        return

    def _build_opt_list(self, opts):
        opts_config = original(self, opts)
        for key in ("config", "model", "dataset", "datasets"):
            if key not in opts_config:
                opts_config[key] = None
        return opts_config

    _build_opt_list.__mmf_fashion__ = True
    module.Configuration._build_opt_list = _build_opt_list
    _record("Configuration._build_opt_list: missing config/model/dataset(s) -> None")

    original_user = module.Configuration._build_user_config

    def _build_user_config(self, opts):
        user_config = original_user(self, opts)
        if isinstance(user_config, dict):
            user_config = module.OmegaConf.create(user_config)
        return user_config

    module.Configuration._build_user_config = _build_user_config


@patch("mmf.utils.configuration")
def clear_unknown_names(module):
    """rc10 only warns for an unknown model or dataset name and then fails far
    away; say which names exist instead."""
    original_model = module.Configuration._build_model_config
    original_dataset = module.Configuration._build_dataset_config
    registry = module.registry

    def _build_model_config(self, config):
        if config.model is not None and registry.get_model_class(config.model) is None:
            raise ValueError(
                f"Unknown model '{config.model}'. Registered models: "
                f"{_registered_names(registry, 'model_name_mapping')}"
            )
        return original_model(self, config)

    def _build_dataset_config(self, config):
        names = config.datasets or config.dataset
        for name in (names or "").split(","):
            if name and registry.get_builder_class(name) is None:
                raise ValueError(
                    f"Unknown dataset '{name}'. Registered dataset builders: "
                    f"{_registered_names(registry, 'builder_name_mapping')}"
                )
        return original_dataset(self, config)

    module.Configuration._build_model_config = _build_model_config
    module.Configuration._build_dataset_config = _build_dataset_config
    _record("Configuration: unknown model/dataset names list the registered ones")


# ---------------------------------------------------------------- env / imports
@patch("mmf.utils.env")
def register_plugin_in_setup_imports(module):
    """MMF loads its registrations in setup_imports(): load ours there too, so
    plain `mmf_run` sees mmf_fashion's models, builders, metrics and trainer."""
    original = module.setup_imports
    if getattr(original, "__mmf_fashion__", False):
        return

    def setup_imports():
        original()
        import sys

        mmf_spec = getattr(sys.modules.get("mmf"), "__spec__", None)
        if getattr(mmf_spec, "_initializing", False):
            # rc10's registry.py calls setup_imports() while `import mmf` is
            # still running; our modules import mmf, so register on the next
            # call (mmf_run and our entry points call it again first thing).
            return
        import importlib

        # the one place the bridge reaches the plugin: by name, at run time
        module_name, _, function_name = PLUGIN_REGISTRATION.partition(":")
        getattr(importlib.import_module(module_name), function_name)()

    setup_imports.__mmf_fashion__ = True
    module.setup_imports = setup_imports
    _record("env.setup_imports: also imports mmf_fashion.plugin")


# ---------------------------------------------------------------- logger
@patch("mmf.utils.logger")
def collections_abc_mapping(module):
    """rc10's logger uses collections.Mapping, removed in Python 3.10."""
    import collections

    if not hasattr(collections, "Mapping") and "collections.Mapping" in _source(module):
        import types

        shim = types.SimpleNamespace(**{k: getattr(collections, k) for k in dir(collections) if not k.startswith("__")})
        shim.Mapping = collections.abc.Mapping
        shim.abc = collections.abc
        module.collections = shim
        _record("logger: collections.Mapping -> collections.abc.Mapping")


# ---------------------------------------------------------------- checkpoint
@patch("mmf.utils.checkpoint")
def config_to_yaml(module):
    """rc10 writes config.yaml with DictConfig.pretty(), removed from omegaconf."""
    from omegaconf import OmegaConf

    if ".pretty(" in _source(module.Checkpoint.save_config):

        def save_config(self):
            path = os.path.join(self.ckpt_foldername, "config.yaml")
            with open(path, "w") as f:
                f.write(OmegaConf.to_yaml(self.config, resolve=True))

        module.Checkpoint.save_config = save_config
        _record_replacement(
            "Checkpoint.save_config",
            "rc10 calls DictConfig.pretty(), removed from omegaconf; writes config.yaml with OmegaConf.to_yaml",
        )


def _reads_torch_files(function) -> bool:
    # the function looks up the module's `torch` and calls its `load`
    code = getattr(function, "__code__", None)
    return code is not None and "torch" in code.co_names and "load" in code.co_names


@patch("mmf.utils.checkpoint")
def weights_only_checkpoints(module):
    """rc10 unpickles checkpoints in full (Checkpoint._torch_load, used by
    training.trainer=base_trainer resumes; load_pretrained_model, used by
    BaseModel.from_pretrained and checkpoint.resume_zoo), so a file can run
    code. Our trainer never goes there, but mmf_run and user code can: give
    that module a torch whose load is safe_torch_load, with the run's
    checkpoint.allow_unsafe_load as the opt-in."""
    import types

    import torch

    current = getattr(module, "torch", None)
    if getattr(current, "__mmf_fashion__", False) or current is not torch:
        return
    readers = (
        getattr(module, "load_pretrained_model", None),
        getattr(getattr(module, "Checkpoint", None), "_torch_load", None),
    )
    if not any(_reads_torch_files(reader) for reader in readers):
        return
    from mmf_fashion.trainers.checkpointing import safe_torch_load, unsafe_load_allowed

    class _TorchWithSafeLoad(types.ModuleType):
        """torch for this module only: every name is torch's, except load."""

        __mmf_fashion__ = True

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def load(f, map_location=None, **_ignored):
            # weights_only and pickle options are not the caller's to choose
            return safe_torch_load(f, allow_unsafe=unsafe_load_allowed(), map_location=map_location)

    module.torch = _TorchWithSafeLoad("torch")
    _record("checkpoint: Checkpoint._torch_load and load_pretrained_model read through safe_torch_load")


# ---------------------------------------------------------------- distributed
@patch("mmf.utils.distributed")
def distributed_without_nccl_or_cuda(module):
    """Both MMFs report rank 0 / world 1 whenever NCCL is missing (get_rank,
    get_world_size and synchronize ask dist.is_nccl_available() first), so gloo
    CPU runs think they are alone; and distributed_init checks the new process
    group with a .cuda() tensor. The smallest change: this module's
    torch.distributed answers is_nccl_available() with True (the checks that
    follow, is_initialized and the group itself, decide), and on a machine
    without CUDA the process group (gloo) is made before MMF's distributed_init,
    which then only records the rank. MMF main's XLA paths are untouched."""
    import types

    import torch
    import torch.distributed as dist

    current = getattr(module, "dist", None)
    if getattr(current, "__mmf_fashion__", False) or "is_nccl_available" not in _source(module.get_rank):
        return

    class _AnyBackend(types.ModuleType):
        """torch.distributed for this module only: every name is torch's, except is_nccl_available."""

        __mmf_fashion__ = True

        def __getattr__(self, name):
            return getattr(dist, name)

        @staticmethod
        def is_nccl_available():
            return True

    module.dist = _AnyBackend("torch.distributed")
    original_init = module.distributed_init

    def distributed_init(config):
        if torch.cuda.is_available():
            return original_init(config)
        if config.distributed.backend == "nccl":
            config.distributed.backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                backend=config.distributed.backend,
                init_method=config.distributed.init_method,
                world_size=config.distributed.world_size,
                rank=config.distributed.rank,
            )
            dist.all_reduce(torch.zeros(1))
            module.suppress_output(dist.get_rank() == 0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Distributed is already initialized")
            return original_init(config)

    distributed_init.__wrapped__ = original_init
    module.distributed_init = distributed_init
    _record(
        "distributed: gloo / CPU process groups count (is_nccl_available() no longer decides rank and world "
        "size); without CUDA the group is made before MMF's distributed_init, which needs .cuda()"
    )


@patch("mmf_cli.run")
def local_rank_device(module):
    """Under torchrun, rc10's run path gives device_id 0 to every rank."""
    original = module.distributed_main
    if getattr(original, "__mmf_fashion__", False):
        return

    def distributed_main(device_id, configuration, predict=False):
        config = configuration.get_config()
        if "LOCAL_RANK" in os.environ and config.distributed.no_spawn:
            device_id = int(os.environ["LOCAL_RANK"])
        config.device_id = device_id
        if config.distributed.rank is None:
            config.distributed.rank = config.start_rank + device_id
        module.main(configuration, init_distributed=True, predict=predict)

    distributed_main.__mmf_fashion__ = True
    module.distributed_main = distributed_main
    _record_replacement(
        "mmf_cli.run.distributed_main",
        "under torchrun rc10 gives device 0 to every rank; the device comes from LOCAL_RANK",
    )


# ---------------------------------------------------------------- metrics / losses
@patch("mmf.modules.metrics")
def metric_params(module):
    """rc10 reads a metric's params after `metric = metric.type`, so they are
    silently dropped; metrics may also return a dict of values."""
    if "metric = metric.type" not in _source(module.Metrics._init_metrics):
        return

    # A thin adapter, not a second builder: fashion_trainer's MetricSet and
    # this patch (MMF's own trainers) both call evaluation.build_metrics, the
    # one place metrics are built from the config; MMF keeps only its loop.
    def _init_metrics(self, metric_list):
        from mmf_fashion.trainers.evaluation import build_metrics

        metrics, required = build_metrics(metric_list)
        self.required_params = {"dataset_name", "dataset_type"} | required
        return metrics

    module.Metrics._init_metrics = _init_metrics
    _record("Metrics._init_metrics: params passed to the metric; clear unknown-name error")


@patch("mmf.modules.losses")
def losses_without_targets(module):
    """MMF computes no loss at all when the batch has no `targets` field (both
    versions, with a warning per batch): pretraining batches have none. Batches
    with targets still go through MMF's own forward; without, the configured
    losses run as MMF would run them, and MMF main's registration of the
    losses (`losses.<dataset>.<split>` in the registry) is kept."""
    import torch

    source = _source(module.Losses.forward)
    if "targets" not in source:
        return
    original = module.Losses.forward
    registers = "registry.register" in source  # MMF main

    def forward(self, sample_list, model_output, *args, **kwargs):
        if "targets" in sample_list or self._evaluation_predict:
            return original(self, sample_list, model_output, *args, **kwargs)
        output = {}
        for loss in self.losses:
            output.update(loss(sample_list, model_output, *args, **kwargs))
        if registers and not torch.jit.is_scripting():
            key = f"losses.{sample_list['dataset_name']}.{sample_list['dataset_type']}"
            module.registry.register(key, output)
        return output

    module.Losses.forward = forward
    _record("Losses.forward: batches without `targets` (pretraining) get their losses; others run MMF's forward")
