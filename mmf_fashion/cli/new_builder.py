"""`mmf-fashion new-builder NAME`: write a working dataset builder to start from.

Cheatsheet::

    mmf-fashion new-builder my_catalogue                 # -> ./my_catalogue/
    mmf-fashion new-builder my_catalogue --out plugins   # -> plugins/my_catalogue/
    python -m pytest plugins/my_catalogue/tests          # the generated test
    mmf_run config=my.yaml model=align dataset=my_catalogue \\
        env.user_dir=plugins/my_catalogue env.data_dir=/data

It writes an MMF user plugin (a folder MMF imports with env.user_dir):

    NAME/__init__.py             imports the builder (registration)
    NAME/builder.py              @registry.register_builder("NAME")
    NAME/dataset.py              CSV product catalogue -> Samples
    NAME/configs/defaults.yaml   dataset_config.NAME: data_dir, processors
    NAME/tests/test_NAME.py      a tiny CSV + images in tmp_path, loaded by the builder

The builder reads <data_dir>/NAME/{train,val,test}.csv (columns image,
title, category, optional product_id; image paths relative to
<data_dir>/NAME/) and emits the docs/ARCHITECTURE.md keys. Existing files
are never overwritten. The walk-through is docs/contributing_a_dataset_builder.md.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import sys
from typing import Dict, List

INIT_TEMPLATE = '''"""__NAME__: a product catalogue in CSV files, as an MMF dataset (user plugin).

Cheatsheet::

    mmf_run config=my.yaml model=align dataset=__NAME__ env.user_dir=/path/to/__NAME__
    python -m pytest /path/to/__NAME__/tests

MMF imports this folder as the module ``__NAME__`` (env.user_dir); importing
the builder registers it.
"""
from . import builder  # noqa: F401  (registers the "__NAME__" builder)
'''

BUILDER_TEMPLATE = '''"""The "__NAME__" dataset builder: registration, default config, split files.

Cheatsheet::

    from mmf.utils.build import build_dataset
    val = build_dataset("__NAME__", config.dataset_config.__NAME__, "val")
    registry.get("__NAME___num_categories"), registry.get("__NAME___category_names")
"""
import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder, config_value

from .dataset import COLUMNS_HINT, __CLASS__Dataset


@registry.register_builder("__NAME__")
class __CLASS__Builder(FashionDatasetBuilder):
    """Product catalogue from <data_dir>/__NAME__/{train,val,test}.csv (image, title, category)."""

    dataset_class = __CLASS__Dataset

    def __init__(self):
        super().__init__("__NAME__")

    @classmethod
    def config_path(cls):
        here = os.path.dirname(os.path.abspath(__file__))
        # as a user plugin: configs/defaults.yaml; inside mmf_fashion: defaults.yaml
        for candidate in (os.path.join(here, "configs", "defaults.yaml"), os.path.join(here, "defaults.yaml")):
            if os.path.isfile(candidate):
                return candidate
        return None

    def build(self, config, dataset_type="train", *args, **kwargs):
        # Nothing to download or convert: fail early, naming the missing file.
        data_dir = os.path.abspath(str(config_value(config, "data_dir", "")))
        folder = str(config_value(config, "folder", "__NAME__"))
        path = os.path.join(data_dir, folder, f"{dataset_type}.csv")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"__NAME__ ({dataset_type}): {path} not found. Expected {COLUMNS_HINT}; "
                "point env.data_dir (or dataset_config.__NAME__.data_dir) at the folder holding __NAME__/."
            )

    def update_registry_for_model(self, config):
        # num_categories sizes classification heads; the names label plots and zero-shot prompts
        super().update_registry_for_model(config)
        if self.dataset is not None:
            registry.register(f"{self.dataset_name}_category_names", list(self.dataset.category_names))
'''

DATASET_TEMPLATE = '''"""The "__NAME__" dataset: one product image per CSV row.

Cheatsheet::

    <data_dir>/__NAME__/train.csv      image,title,category[,product_id]
    <data_dir>/__NAME__/val.csv        (same columns; test.csv too)
    <data_dir>/__NAME__/images/...     CSV image paths are relative to <data_dir>/__NAME__/

    dataset = build_dataset("__NAME__", config.dataset_config.__NAME__, "train")
    sample = dataset[0]
    sample.image (3, H, W); sample.input_ids / attention_mask / token_type_ids (L,)
    sample.text (the title); sample.product_id, image_id, category_id, targets ()

Bad input follows mmf_fashion's policy (dataset option on_bad_sample): the
error names the file, the record (the CSV line number) and the field;
under on_bad_sample: skip the row is skipped, counted and reported instead.
"""
import csv
import os
from typing import Dict, List

import torch
from mmf.common.sample import Sample

from mmf_fashion.datasets.base import FashionDataset
from mmf_fashion.datasets.common import BadSampleError, require_int, require_text

REQUIRED_COLUMNS = ("image", "title", "category")
SPLITS = ("train", "val", "test")
COLUMNS_HINT = "a CSV with the columns image,title,category (optional product_id)"


def read_rows(path: str) -> List[Dict]:
    """The rows of a split file as dicts with their CSV line number under '_line'."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise ValueError(
                f"{path}: line 1 (header): column(s) {missing} missing; found {header}; expected {COLUMNS_HINT}"
            )
        for row in reader:
            row["_line"] = reader.line_num
            rows.append(row)
    return rows


class __CLASS__Dataset(FashionDataset):
    """One product image per row: image, title (text), category (label)."""

    def __init__(self, config, dataset_type="train", *args, **kwargs):
        super().__init__("__NAME__", config, dataset_type)
        self.folder = str(self.option("folder", "__NAME__"))
        self.csv_path = os.path.join(self.data_dir, self.folder, f"{dataset_type}.csv")
        self.category_names = self.category_vocabulary()
        category_index = {name: index for index, name in enumerate(self.category_names)}
        for row_number, row in enumerate(read_rows(self.csv_path)):
            try:
                # without a product_id column every row is its own product
                self.items.append(self.parse_row(row, category_index, default_product_id=row_number))
            except BadSampleError as error:
                self.handle_bad(error, at_load=True)  # raise (error) or count (skip)
        self.finish_loading()

    def category_vocabulary(self) -> List[str]:
        """Names in id order: the option `categories` when set, else the sorted names
        of every split file present, so that train, val and test ids agree."""
        explicit = [str(name) for name in (self.option("categories", None) or [])]
        if explicit:
            return explicit
        names = set()
        for split in SPLITS:
            path = os.path.join(self.data_dir, self.folder, f"{split}.csv")
            if os.path.isfile(path):
                names.update((row.get("category") or "").strip() for row in read_rows(path))
        return sorted(name for name in names if name)

    def parse_row(self, row: Dict, category_index: Dict[str, int], default_product_id: int) -> Dict:
        file, record = self.csv_path, row["_line"]
        if None in row:
            raise BadSampleError(file, record, "*", "more fields than the header has columns", "bad_value")
        image_path = (row.get("image") or "").strip()
        image = self.data_path(image_path, file=file, record=record, field="image", root=self.folder)
        title = require_text(row.get("title") or "", file=file, record=record, field="title")
        category = (row.get("category") or "").strip()
        if category not in category_index:
            raise BadSampleError(
                file, record, "category", f"'{category}' is not one of the categories {self.category_names}",
                "unknown_category" if category else "missing_field",
            )
        product = (row.get("product_id") or "").strip()
        product_id = (
            require_int(product, file=file, record=record, field="product_id") if product else default_product_id
        )
        return {"record": record, "image": image, "title": title, "category_id": category_index[category],
                "product_id": product_id}

    def label_counts(self) -> Dict[str, int]:
        return {"num_categories": len(self.category_names)}

    def build_sample(self, index: int) -> Sample:
        item = self.items[index]
        image = self.load_image(item["image"], file=self.csv_path, record=item["record"], field="image")
        sample = Sample()
        sample.image = self.require_processor("image_processor")({"image": image, "is_train": self.is_train})["image"]
        for key, value in self.require_processor("text_processor")({"text": item["title"]}).items():
            sample[key] = value
        sample.text = item["title"]
        sample.product_id = torch.tensor(item["product_id"], dtype=torch.long)
        sample.image_id = torch.tensor(index, dtype=torch.long)
        sample.category_id = torch.tensor(item["category_id"], dtype=torch.long)
        sample.targets = torch.tensor(item["category_id"], dtype=torch.long)
        return sample
'''

DEFAULTS_TEMPLATE = """# Default config of the "__NAME__" builder; override any key in your project
# YAML (dataset_config.__NAME__...) or on the command line.
dataset_config:
  __NAME__:
    # the split files are <data_dir>/<folder>/{train,val,test}.csv
    data_dir: ${env.data_dir}
    folder: __NAME__
    # category names in id order; empty: the sorted names found in the split files
    categories: []
    # bad input: error (names file, record = CSV line, field) | skip (counted, reported per epoch)
    on_bad_sample: error
    allow_paths_outside_root: false
    max_skip_retries: 50
    processors:
      text_processor:
        type: fashion_text_tokenizer
        params:
          tokenizer: minilm
          max_length: 40
      image_processor:
        type: fashion_image_transform
        params:
          size: 224
          train_crop: random_resized_crop
          scale: [0.5, 1.0]
          horizontal_flip: 0.5
"""

TEST_TEMPLATE = '''"""Tests of the "__NAME__" builder on a tiny catalogue written into tmp_path.

Run: python -m pytest <plugin folder>/tests
"""
import csv
import importlib
import os
from pathlib import Path

import pytest

import mmf_fashion.bridge

mmf_fashion.bridge.install()  # before anything imports mmf

PLUGIN_DIR = Path(__file__).resolve().parents[1]
ROWS = [
    {"image": "images/a.png", "title": "red striped shirt", "category": "shirts"},
    {"image": "images/b.png", "title": "blue denim jeans", "category": "trousers"},
    {"image": "images/c.png", "title": "green wool shirt", "category": "shirts"},
]


@pytest.fixture(scope="module")
def plugin():
    """The plugin imported the way mmf_run imports it (env.user_dir)."""
    from mmf.utils.env import import_user_module, setup_imports

    setup_imports()
    import_user_module(str(PLUGIN_DIR))  # the one argument both MMF 1.0.0rc10 and main take
    return importlib.import_module(PLUGIN_DIR.name + ".builder")


def write_catalogue(root: Path, split: str, rows, colours=((200, 30, 30), (30, 30, 200), (30, 160, 30))):
    from PIL import Image

    folder = root / "__NAME__"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        image_path = folder / row["image"]
        if not image_path.exists() and row["image"].endswith(".png"):
            Image.new("RGB", (40, 30), colours[index % len(colours)]).save(image_path)
    with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def load_split(plugin, data_dir: Path, split: str, **options):
    from mmf.utils.build import build_dataset
    from mmf.utils.configuration import load_yaml_with_defaults

    config = load_yaml_with_defaults(plugin.__CLASS__Builder.config_path()).dataset_config.__NAME__
    config.data_dir = str(data_dir)
    for key, value in options.items():
        config[key] = value
    config.processors.image_processor.params.size = 32
    config.processors.text_processor.params.max_length = 16
    return build_dataset("__NAME__", config, split)


def test_registered_under_its_name(plugin):
    from mmf.common.registry import registry

    assert registry.get_builder_class("__NAME__") is plugin.__CLASS__Builder


def test_rows_become_samples_with_the_contract_keys(plugin, tmp_path):
    write_catalogue(tmp_path, "train", ROWS)
    dataset = load_split(plugin, tmp_path, "train")
    assert len(dataset) == 3
    sample = dataset[1]
    assert tuple(sample.image.shape) == (3, 32, 32)
    assert sample.input_ids.shape == sample.attention_mask.shape == (16,)
    assert int(sample.attention_mask.sum()) > 2  # [CLS] title [SEP]
    assert sample.text == "blue denim jeans"
    assert int(sample.product_id) == 1 and int(sample.image_id) == 1
    # categories sorted by name: shirts 0, trousers 1
    assert int(sample.category_id) == int(sample.targets) == 1

    from mmf.common.batch_collator import BatchCollator

    batch = BatchCollator("__NAME__", "train")([dataset[0], dataset[2]])
    assert tuple(batch.image.shape) == (2, 3, 32, 32)
    assert batch.category_id.tolist() == [0, 0]


def test_category_ids_agree_across_splits(plugin, tmp_path):
    from mmf.common.registry import registry

    write_catalogue(tmp_path, "train", ROWS)
    write_catalogue(tmp_path, "val", [{"image": "images/b.png", "title": "grey jeans", "category": "trousers"}])
    val = load_split(plugin, tmp_path, "val")
    assert int(val[0].category_id) == 1
    assert registry.get("__NAME___category_names") == ["shirts", "trousers"]
    assert registry.get("__NAME___num_categories") == 2


def test_an_empty_field_is_named_with_file_record_and_field(plugin, tmp_path):
    write_catalogue(tmp_path, "train", [dict(ROWS[0]), dict(ROWS[1], title="  ")])
    with pytest.raises(ValueError) as error:
        load_split(plugin, tmp_path, "train")
    message = str(error.value)
    # record = the CSV line (line 1 is the header)
    assert "train.csv: record 3: field 'title'" in message


def test_a_missing_image_is_named_when_read(plugin, tmp_path):
    write_catalogue(tmp_path, "train", [dict(ROWS[0]), dict(ROWS[1], image="images/missing.jpg")])
    dataset = load_split(plugin, tmp_path, "train")
    with pytest.raises(ValueError) as error:
        dataset[1]
    message = str(error.value)
    assert "train.csv: record 3: field 'image'" in message and "missing.jpg" in message


def test_image_paths_must_stay_inside_the_data_directory(plugin, tmp_path):
    write_catalogue(tmp_path, "train", [dict(ROWS[0]), dict(ROWS[1], image="../../../etc/passwd")])
    with pytest.raises(ValueError, match="record 3: field 'image'.*leaves the data directory"):
        load_split(plugin, tmp_path, "train")


def test_skip_policy_drops_and_counts_bad_rows(plugin, tmp_path):
    write_catalogue(tmp_path, "train", ROWS + [{"image": "images/a.png", "title": "", "category": "shirts"}])
    dataset = load_split(plugin, tmp_path, "train", on_bad_sample="skip")
    assert len(dataset) == 3
    assert dataset.bad_samples.counts() == {"empty_caption": 1}


def test_a_missing_split_file_is_named(plugin, tmp_path):
    write_catalogue(tmp_path, "train", ROWS)
    with pytest.raises(FileNotFoundError, match=os.path.join("__NAME__", "test.csv")):
        load_split(plugin, tmp_path, "test")
'''


class NewBuilderError(ValueError):
    """A user-facing problem with the name or the target folder."""


def class_prefix(name: str) -> str:
    """my_catalogue -> MyCatalogue (the class names' stem)."""
    prefix = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return prefix if prefix and not prefix[0].isdigit() else "Catalogue" + prefix


def check_name(name: str, folder: str) -> None:
    """NAME must be an identifier that neither replaces one of our builders nor
    shadows (or is shadowed by) an importable module. `folder` is the plugin
    folder about to be written: a module found there is our own earlier output."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise NewBuilderError(f"'{name}' is not a valid Python identifier (letters, digits, _; not a keyword)")
    builders = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets", "builders")
    if os.path.isdir(os.path.join(builders, name)):
        raise NewBuilderError(f"'{name}' is a builder of mmf_fashion; registering it again would replace it")
    # MMF imports env.user_dir as the top-level module NAME and skips the
    # import when a module of that name is already loaded.
    loaded = sys.modules.get(name)
    spec = getattr(loaded, "__spec__", None) if loaded is not None else importlib.util.find_spec(name)
    if loaded is None and spec is None:
        return
    origin = getattr(spec, "origin", None) or getattr(loaded, "__file__", None)
    if not _inside(origin, folder):
        raise NewBuilderError(
            f"'{name}' is already an importable Python module ({origin or 'built in'}); "
            "MMF's env.user_dir would load that one instead: choose another name"
        )


def _inside(path, folder: str) -> bool:
    if not path:
        return False
    folder = os.path.abspath(folder)
    return os.path.abspath(path).startswith(folder + os.sep)


def render(name: str) -> Dict[str, str]:
    """{relative path: file text} of the plugin folder."""
    prefix = class_prefix(name)

    def fill(template: str) -> str:
        return template.replace("__NAME__", name).replace("__CLASS__", prefix)

    return {
        "__init__.py": fill(INIT_TEMPLATE),
        "builder.py": fill(BUILDER_TEMPLATE),
        "dataset.py": fill(DATASET_TEMPLATE),
        os.path.join("configs", "defaults.yaml"): fill(DEFAULTS_TEMPLATE),
        os.path.join("tests", f"test_{name}.py"): fill(TEST_TEMPLATE),
    }


def write_plugin(name: str, out_dir: str = ".") -> List[str]:
    """Write the plugin folder out_dir/name; refuses to overwrite any file. Returns the paths written."""
    folder = os.path.join(out_dir, name)
    check_name(name, folder)
    files = {os.path.join(folder, relative): text for relative, text in render(name).items()}
    existing = sorted(path for path in files if os.path.exists(path))
    if existing:
        raise NewBuilderError("refusing to overwrite existing file(s): " + ", ".join(existing))
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:  # "x": never replace a file
            handle.write(text)
    return list(files)


def run(args) -> int:
    try:
        written = write_plugin(args.name, args.out)
    except NewBuilderError as error:
        print(f"mmf-fashion new-builder: {error}", file=sys.stderr)
        return 2
    folder = os.path.join(args.out, args.name)
    print(f"wrote the '{args.name}' dataset builder plugin:")
    for path in written:
        print(f"  {path}")
    print(
        "next:\n"
        f"  python -m pytest {os.path.join(folder, 'tests')}\n"
        f"  put your CSVs in <data_dir>/{args.name}/{{train,val,test}}.csv (image,title,category)\n"
        f"  mmf_run config=<your.yaml> model=<model> dataset={args.name} "
        f"env.user_dir={os.path.abspath(folder)} env.data_dir=<data_dir>\n"
        "  guide: docs/contributing_a_dataset_builder.md"
    )
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("new-builder", help="write a working CSV product-catalogue builder plugin")
    parser.add_argument("name", metavar="NAME", help="builder name, a Python identifier (e.g. my_catalogue)")
    parser.add_argument("--out", default=".", help="parent folder of the plugin (default: current directory)")
    parser.set_defaults(func=run)
