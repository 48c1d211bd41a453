"""Build a model and a dataset from an MMF config outside `mmf_run`.

Cheatsheet::

    from mmf_fashion.runtime import load_config, build_model_from_config, build_split_dataset

    config = load_config("projects/align/configs/itr.yaml", model="align", dataset="fashiongen",
                         overrides=["env.data_dir=/tmp/fixture", "model_config.align.embed_dim=32"])
    model = build_model_from_config(config, checkpoint="save/align_itr/align_final.pth")  # eval mode
    # a checkpoint that needs full unpickling: refused unless the user opts in
    model = build_model_from_config(config, checkpoint="trusted.ckpt", allow_unsafe=True)
    val = build_split_dataset(config, "fashiongen", "val")
    sample = val[0]                          # an mmf Sample with the ARCHITECTURE.md keys
    loader = split_loader(val, batch_size=16)   # SampleLists, MMF's collator

The config goes through MMF's own Configuration (defaults -> model
config_path() -> builder config_path() -> the YAML -> the overrides), so a
command sees exactly what `mmf_run config=... model=... dataset=... k=v`
would. The bridge is installed and the plugin registered on first use.
build_model_from_config is the one function that builds a model from a
config and a checkpoint (plot embeddings, index build/search, benchmarks);
it reads every file through checkpointing.safe_torch_load.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

SPLITS = ("train", "val", "test")


class RuntimeSetupError(ValueError):
    """A user-facing problem with a config, checkpoint or dataset (the CLI prints it)."""


class ConsoleWriter:
    """Stands in for MMF's Logger (which captures stdout and writes log files
    under save_dir): warnings and errors go to stderr, the rest only when verbose."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose

    def write(self, message, level: str = "info", donot_print: bool = False, *args, **kwargs) -> None:
        if donot_print:
            return
        if self.verbose or str(level).lower() in ("warning", "error", "critical"):
            print(f"[{level}] {message}", file=sys.stderr)


def ensure_mmf() -> None:
    """The bridge first, then MMF's registry with every mmf_fashion registration."""
    import mmf_fashion.bridge

    mmf_fashion.bridge.install()
    from mmf.utils.env import setup_imports

    import mmf_fashion.plugin

    setup_imports()
    mmf_fashion.plugin.register_all()


def load_config(
    config_path: Optional[str],
    model: str,
    dataset: str,
    overrides: Sequence[str] = (),
    verbose: bool = False,
):
    """MMF's merged DictConfig for (config, model, dataset) plus k=v overrides.

    Registers it (and a console writer when none is registered) in MMF's
    registry, as mmf_run does, because MMF's datasets and processors read
    them from there.
    """
    ensure_mmf()
    from mmf.common.registry import registry
    from mmf.utils.configuration import Configuration

    from mmf_fashion.resources import find_include

    opts = []
    if config_path:
        try:
            opts.append(f"config={find_include(config_path)}")
        except FileNotFoundError as error:
            raise RuntimeSetupError(f"--config: {error}") from error
    opts += [f"model={model}", f"dataset={dataset}"]
    for override in overrides:
        if "=" not in override or override.startswith("="):
            raise RuntimeSetupError(f"override '{override}' should look like key=value (e.g. training.batch_size=8)")
        opts.append(override)
    args = argparse.Namespace(opts=opts, config_override=None)
    try:
        configuration = Configuration(args)
    except (KeyError, ValueError, AttributeError) as error:
        raise RuntimeSetupError(f"cannot build the config from {opts}: {error}") from error
    configuration.args = args
    config = configuration.get_config()
    registry.register("config", config)
    registry.register("configuration", configuration)
    if registry.get("writer", no_warning=True) is None:
        registry.register("writer", ConsoleWriter(verbose=verbose))
    return config


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeSetupError(f"device '{name}' asked for but CUDA is not available")
    return device


def _ensure_mmf_globals(verbose: bool = False) -> None:
    # some models read the global config or writer while they build; load_config
    # registers both, a caller with only a model config (the index) may not have
    from mmf.common.registry import registry

    if registry.get("config", no_warning=True) is None:
        from mmf.utils.configuration import Configuration

        registry.register("config", Configuration().get_config())
    if registry.get("writer", no_warning=True) is None:
        registry.register("writer", ConsoleWriter(verbose=verbose))


def build_model_from_config(
    config,
    checkpoint: Optional[str] = None,
    device: str = "cpu",
    strict: bool = True,
    *,
    allow_unsafe: Optional[bool] = None,
    checkpoint_state=None,
):
    """The registered model of config.model, built as the trainer builds it,
    with the weights of `checkpoint` (a `<model>_final.pth` state dict or a
    trainer checkpoint holding "model"), in eval mode on `device`.

    The one place that turns a config + checkpoint into a model (plot,
    index, benchmarks). config: anything with `model` and
    `model_config.<model>` (load_config's, or
    mmf_fashion.retrieval.model_io.resolve_model_config's for the index).
    allow_unsafe: the user's opt-in to full unpickling (--allow-unsafe-load);
    None reads checkpoint.allow_unsafe_load from config. The same decision
    covers the files the model reads while it builds (tokenizer, encoder
    weights). checkpoint_state: the checkpoint already read with
    safe_torch_load, so that a caller who needed its saved config reads it once.
    """
    ensure_mmf()
    from mmf.common.registry import registry
    from mmf.utils.build import build_model
    from omegaconf import open_dict

    from mmf_fashion.trainers import checkpointing as ckpt

    if allow_unsafe is None:
        allow_unsafe = ckpt.unsafe_load_allowed(config)
    if checkpoint and checkpoint_state is None and not os.path.isfile(checkpoint):
        raise RuntimeSetupError(f"checkpoint {checkpoint}: no such file")
    name = config.model
    if not name or name not in config.model_config:
        raise RuntimeSetupError(f"model '{name}' has no entry in model_config")
    attributes = config.model_config[name]
    if isinstance(attributes, str):  # an alias to another model's config
        attributes = config.model_config[attributes]
    with open_dict(attributes):
        attributes.model = name
    torch_device = resolve_device(str(device))
    registry.register("current_device", torch_device)
    _ensure_mmf_globals()
    state = checkpoint_state
    if checkpoint and state is None:  # read before the (slower) build: a refused file fails fast
        try:
            state = ckpt.safe_torch_load(checkpoint, allow_unsafe=allow_unsafe)
        except (ckpt.UnsafeCheckpointError, ValueError) as error:  # the message names the file
            raise RuntimeSetupError(str(error)) from error
    try:
        with ckpt.unsafe_loading(allow_unsafe):
            model = build_model(attributes)
    except ckpt.UnsafeCheckpointError as error:  # a file the model reads while it builds
        raise RuntimeSetupError(str(error)) from error
    if state is not None:
        weights = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
        if not isinstance(weights, dict):
            raise RuntimeSetupError(
                f"{checkpoint}: expected a state dict or a checkpoint with a 'model' entry, "
                f"found {type(weights).__name__}"
            )
        try:
            ckpt.load_model_state(model, weights, strict=strict, source=str(checkpoint), what=f"model '{name}'")
        except ValueError as error:  # the message lists missing / unexpected / mismatched keys
            raise RuntimeSetupError(f"{error}\n(was it trained with this model config?)") from error
    return model.to(torch_device).eval()


def build_split_dataset(config, dataset: str, split: str = "val"):
    """One split of a registered dataset through mmf.utils.build.build_dataset,
    with processors built from THIS config (MMF otherwise reuses processors
    left in the registry by an earlier config of the same dataset)."""
    from mmf.common.registry import registry
    from mmf.utils.build import build_dataset

    if split not in SPLITS:
        raise RuntimeSetupError(f"split must be one of {SPLITS}, got '{split}'")
    if registry.get_builder_class(dataset) is None:
        from mmf_fashion.plugin import registered_names

        raise RuntimeSetupError(f"unknown dataset '{dataset}'; registered: {', '.join(registered_names('builder'))}")
    if dataset not in config.dataset_config:
        raise RuntimeSetupError(f"dataset '{dataset}' has no entry in dataset_config (was dataset={dataset} given?)")
    dataset_config = config.dataset_config[dataset]
    for processor_key in dataset_config.get("processors", None) or {}:
        registry.unregister(f"{dataset}_{processor_key}")
    if registry.get("current_device", no_warning=True) is None:
        registry.register("current_device", resolve_device("cpu"))
    built = build_dataset(dataset, dataset_config, split)
    if built is None or len(built) == 0:
        data_dir = dataset_config.get("data_dir", None) or config.env.data_dir
        raise RuntimeSetupError(f"dataset '{dataset}' has no '{split}' items (data_dir={data_dir})")
    return built


def split_loader(dataset, batch_size: int = 32, indices: Optional[Sequence[int]] = None, num_workers: int = 0):
    """A DataLoader of SampleLists (MMF's BatchCollator) over `indices` (default all), in order."""
    import torch
    from mmf.common.batch_collator import BatchCollator

    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    return torch.utils.data.DataLoader(
        subset,
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=BatchCollator(dataset.dataset_name, dataset.dataset_type),
    )
