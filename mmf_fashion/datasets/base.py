"""The MMF base classes every fashion builder and dataset extends.

Cheatsheet::

    from mmf_fashion.datasets.base import FashionDataset, FashionDatasetBuilder

    class MyDataset(FashionDataset):
        def __init__(self, config, dataset_type="train"):
            super().__init__("my", config, dataset_type)
            self.items = [...]                      # one entry per sample
            self.finish_loading()                   # report load-time skips
        def build_sample(self, index):              # raise BadSampleError on bad input
            return Sample({...})

    dataset.bad_samples.summary()    # what on_bad_sample: skip skipped
    layout = dataset.pick_layout(choice)   # two-layout data sets (format: auto), see layouts.py
    dataset.report_bad_samples()     # log it now (also done at every epoch end)

Config options every fashion dataset reads:
- data_dir: the data directory (env.data_dir); relative = from the working dir.
- on_bad_sample: error (default; the error names file, record and field) |
  skip (the record is skipped, counted once per epoch, and the count logged
  through MMF's writer at the end of each epoch; a skipped __getitem__ serves
  the next good record so batches keep their size).
- allow_paths_outside_root: false (absolute and `..` paths are refused).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, List, Optional, Sequence

import torch
from mmf.common.registry import registry
from mmf.common.sample import Sample
from mmf.datasets.base_dataset import BaseDataset
from mmf.datasets.base_dataset_builder import BaseDatasetBuilder
from torch.utils.data import Dataset

from mmf_fashion.datasets.common import (
    BadSampleCounter,
    BadSampleError,
    DataDirPaths,
    check_policy,
    load_image,
    resolve_data_path,
)
from mmf_fashion.datasets.layouts import Layout, LayoutChoice, choose_layout, synth_hint
from mmf_fashion.utils.run_log import as_writer

logger = logging.getLogger(__name__)


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """config[key] for a DictConfig or a dict, ``default`` when absent or null."""
    if config is None:
        return default
    try:
        value = config.get(key, default)
    except Exception:  # a struct DictConfig may refuse unknown keys
        value = default
    return default if value is None else value


class FashionDataset(DataDirPaths, BaseDataset):
    """Bad-sample policy, safe paths, fresh processors and epoch-end reports."""

    def __init__(self, dataset_name: str, config: Any, dataset_type: str = "train", *args, **kwargs):
        super().__init__(dataset_name, config, dataset_type, *args, **kwargs)
        data_dir = config_value(config, "data_dir")
        if not data_dir:
            raise ValueError(f"dataset_config.{dataset_name}.data_dir is not set")
        self.data_dir = os.path.abspath(str(data_dir))
        self.on_bad_sample = check_policy(config_value(config, "on_bad_sample", "error"), dataset=dataset_name)
        self.allow_paths_outside_root = bool(config_value(config, "allow_paths_outside_root", False))
        self.max_skip_retries = int(config_value(config, "max_skip_retries", 50))
        self.is_train = dataset_type == "train"
        self.bad_samples = BadSampleCounter(f"{dataset_name}/{dataset_type}")
        self.items: List[Any] = []

    # --- pieces for subclasses -------------------------------------------------

    def option(self, key: str, default: Any = None) -> Any:
        return config_value(self.config, key, default)

    def config_path_option(self, key: str, default: str) -> str:
        """A file named in the dataset config, relative to data_dir (same safety rules)."""
        value = str(self.option(key, default))
        return self.data_path(value, file=f"dataset_config.{self.dataset_name}", record=key, field=key)

    def load_image(self, path: str, *, file: Any, record: Any, field: str):
        return load_image(path, file=file, record=record, field=field, min_side=self.decode_min_side())

    def decode_min_side(self) -> Optional[int]:
        """The side JPEGs may be decoded down to (reduced_jpeg_decode, default on): what the
        image processor needs without upsampling a crop; None = full decode. Off when the
        samples carry region boxes, which are in the pixels of the full-size image."""
        if not bool(self.option("reduced_jpeg_decode", True)) or bool(self.option("regions", False)):
            return None
        needed = getattr(getattr(self, "image_processor", None), "min_source_side", None)
        return int(needed(self.is_train)) if callable(needed) else None

    def handle_bad(self, error: BadSampleError, at_load: bool = False, index: Optional[int] = None) -> None:
        """Raise under on_bad_sample: error, count under skip (a record served
        by __getitem__, given by index, once per epoch)."""
        if self.on_bad_sample == "error":
            raise error
        self.bad_samples.record(error, at_load=at_load, index=index)

    def pick_layout(self, choice: LayoutChoice) -> Layout:
        """The layout of a two-layout data set (format: auto | <name>), with the
        choice logged; raises FileNotFoundError naming every layout when none is there."""
        layout, message = choose_layout(choice, self.data_dir, allow_outside_root=self.allow_paths_outside_root)
        if message:
            self.log(message, "info")
        return layout

    def log(self, message: str, level: str = "warning") -> None:
        # rc10's BaseDataset sets self.writer; MMF main's does not (its writer is a logging.Logger)
        writer = as_writer(getattr(self, "writer", None) or registry.get("writer", no_warning=True))
        if writer is not None:
            writer.write(message, level)
        else:
            getattr(logger, level, logger.warning)(message)

    def finish_loading(self) -> None:
        """Call at the end of __init__: logs records dropped while loading."""
        if self.bad_samples.total:
            self.log(self.bad_samples.summary())
        self.bad_samples.track_records(len(self.items))
        if not self.items:
            raise ValueError(
                f"{self.dataset_name}/{self.dataset_type}: no usable records in {self.data_dir}"
                + (f"\n{self.bad_samples.summary()}" if self.bad_samples.total else "")
            )

    def report_bad_samples(self) -> str:
        """Log the bad-sample summary now (the trainer may call this at the end of training)."""
        summary = self.bad_samples.summary()
        if self.bad_samples.total:
            self.log(summary)
        return summary

    def items_per_epoch(self) -> int:
        world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        return int(math.ceil(len(self) / world))

    def __getstate__(self):
        # MMF's writer holds open log files: spawned DataLoader workers fetch
        # their own from the registry (see log()) instead of pickling it.
        state = dict(self.__dict__)
        state["writer"] = None
        return state

    # --- MMF hooks ---------------------------------------------------------------

    def init_processors(self):
        """Like BaseDataset.init_processors, but always builds fresh processors:
        rc10 reuses any processor already registered under
        '<dataset>_<key>', so a second dataset with other params (another
        image size) would silently get the first one's."""
        processors = self.option("processors")
        if not processors:
            return
        from mmf.utils.build import build_processors

        built = build_processors(processors, None, data_dir=self.data_dir)
        for key, processor in built.items():
            setattr(self, key, processor)
            registry.register(f"{self.dataset_name}_{key}", processor)

    def require_processor(self, key: str):
        processor = getattr(self, key, None)
        if processor is None:
            raise ValueError(
                f"dataset_config.{self.dataset_name}.processors.{key} is needed by the options in use "
                f"(see the builder's defaults.yaml)"
            )
        return processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        # subclasses define build_sample(index) -> Sample, raising BadSampleError
        sample = None
        attempts = min(self.max_skip_retries + 1, len(self))
        for attempt in range(attempts):
            record = (index + attempt) % len(self)
            try:
                sample = self.build_sample(record)
                break
            except BadSampleError as error:
                self.handle_bad(error, index=record)
        if sample is None:
            raise RuntimeError(
                f"{self.dataset_name}/{self.dataset_type}: {attempts} bad records in a row "
                f"from index {index}; the data looks broken.\n{self.bad_samples.summary()}"
            )
        self.bad_samples.note_served(self.items_per_epoch(), self.log)
        return sample


class GalleryDataset(Dataset):
    """A retrieval dataset's evaluation gallery: Samples {image, <id_key>, <category_key>}.

    The parent supplies gallery_image(index) (eval transforms; raises
    BadSampleError on bad input) and gallery_categories. A bad image raises
    under on_bad_sample: error; under skip it is counted on the parent and
    served as an all-zero image, because the metrics index the gallery by id
    and a dropped row would shift every id after it.
    """

    def __init__(self, parent: FashionDataset, indices: Sequence[int], *, id_key: str, category_key: str):
        self.parent = parent
        self.indices = list(indices)
        self.id_key, self.category_key = id_key, category_key
        self.dataset_name = parent.dataset_name
        self.dataset_type = parent.dataset_type

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Sample:
        index = self.indices[position]
        try:
            image = self.parent.gallery_image(index)
        except BadSampleError as error:
            self.parent.handle_bad(error)
            size = self.parent.require_processor("image_processor").size
            image = torch.zeros(3, size, size)
        sample = Sample()
        sample.image = image
        sample[self.id_key] = torch.tensor(index, dtype=torch.long)
        sample[self.category_key] = torch.tensor(self.parent.gallery_categories[index], dtype=torch.long)
        return sample


class FashionDatasetBuilder(BaseDatasetBuilder):
    """build() checks the data is there (with instructions when not), load()
    makes the dataset, update_registry_for_model() publishes label counts."""

    dataset_class = None
    # files (relative to data_dir) of which at least one must exist, per split
    required_hint = ""

    def __init__(self, dataset_name: str):
        super().__init__(dataset_name)
        self.dataset = None

    def required_paths(self, config: Any, dataset_type: str) -> Sequence[str]:
        return []

    def layout_choices(self, config: Any, dataset_type: str) -> Sequence[LayoutChoice]:
        """Data sets held in one of two layouts (format: auto): build() fails
        early, naming both, when neither is there."""
        return []

    def build(self, config, dataset_type="train", *args, **kwargs):
        data_dir = config_value(config, "data_dir")
        data_dir = os.path.abspath(str(data_dir)) if data_dir else None
        missing = []
        allow_outside = bool(config_value(config, "allow_paths_outside_root", False))
        if not data_dir or not os.path.isdir(data_dir):
            missing = [str(data_dir)]
        else:
            for choice in self.layout_choices(config, dataset_type):
                choose_layout(choice, data_dir, allow_outside_root=allow_outside)  # the dataset logs the choice
            candidates = [
                resolve_data_path(
                    data_dir,
                    path,
                    file=f"dataset_config.{self.dataset_name}",
                    record="files",
                    field="files",
                    allow_outside_root=allow_outside,
                )
                for path in self.required_paths(config, dataset_type)
            ]
            if candidates and not any(os.path.exists(path) for path in candidates):
                missing = candidates
        if missing:
            raise FileNotFoundError(
                f"{self.dataset_name} ({dataset_type}): data not found: {' or '.join(missing)}.\n"
                f"Put the real files there in their published layout: {self.required_hint}. "
                + synth_hint(data_dir or "<dir>")
            )

    def load(self, config, dataset_type="train", *args, **kwargs):
        self.dataset = self.dataset_class(config, dataset_type)
        return self.dataset

    def update_registry_for_model(self, config):
        """Registers '<name>_num_<label>' counts for the model (rc10 calls this
        after every load)."""
        if self.dataset is None:
            return
        for key, value in getattr(self.dataset, "label_counts", lambda: {})().items():
            registry.register(f"{self.dataset_name}_{key}", value)
