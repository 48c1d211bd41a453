"""Check a data directory without training: counts and every problem found.

Cheatsheet::

    from mmf_fashion.data.check import check_data_dir
    report = check_data_dir("data/synthetic")        # decode_images=False: headers only
    print(report.summary()); report.ok; report.errors
    for problem in report.problems: print(problem)   # file: record: field: message

    # single-value checks for builders: mmf_fashion.data.check_primitives (re-exported here)
    path_problem("images/../../etc/passwd")           # "... climbs out of the root with '..'"

Command line: ``mmf-fashion data check DIR`` (exit code 1 when errors exist).

Each source that is present is read: fashiongen/ (HDF5, FashionViL JSON, regions,
attributes.json), fashioniq/ and polyvore_outfits/. A Problem names the file
(relative to the root), the record (entry / row / line / id) and the field.
"Error" problems make the check fail; "warning" ones are reported only (things
the readers tolerate, e.g. latin-1 text in the HDF5). The summary gives one
line per (file, field, kind of problem) with its count and first records;
report.problems (and --json) keep every one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Set, Tuple, Union

from mmf_fashion.data.check_primitives import (  # noqa: F401  (re-exported for callers)
    ERROR, WARNING, ImageChecker, Problem, ProblemGroup, Report, box_problem, decode_bytes, image_problem,
    load_json_checked, path_problem, relative_to_root, text_problem,
)

INFO_SPLITS = ("train", "val", "test")
HDF5_FILES = ("fashiongen_256_256_train.h5", "fashiongen_256_256_validation.h5")
HDF5_REQUIRED = ("input_image", "input_productID", "input_name", "input_description",
                 "input_category", "input_subcategory")
HDF5_PUBLISHED = ("input_concat_description", "input_pose", "input_gender",
                  "input_composition", "input_department", "input_season", "input_msrpUSD")
INFO_FIELDS = {"images": list, "id": int, "title": str, "description": str,
               "attributes_id": list, "category_id": int, "subcategory_id": int}
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
POLYVORE_SPLITS = ("train", "valid", "test")
HDF5_CHUNK = 1024


# ------------------------------------------------------------------ fashiongen
def check_fashiongen_hdf5(path: Path, root: Path, report: Report, decode_images: bool) -> int:
    """Check one published FashionGen HDF5 file; returns its number of rows."""
    import h5py
    import numpy as np

    file = relative_to_root(path, root)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        report.add(file, "file", "-", f"cannot open HDF5 ({error})")
        return 0
    with handle:
        for name in HDF5_REQUIRED + HDF5_PUBLISHED:
            if name not in handle:
                report.add(file, "dataset", name, "dataset missing",
                           ERROR if name in HDF5_REQUIRED else WARNING)
        if "input_image" not in handle:
            return 0
        images = handle["input_image"]
        rows = images.shape[0]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            report.add(file, "dataset", "input_image",
                       f"expected uint8 (N, H, W, 3), found {images.dtype} {images.shape}")
        for name in HDF5_REQUIRED + HDF5_PUBLISHED:
            if name in handle and handle[name].shape[0] != rows:
                report.add(file, "dataset", name, f"has {handle[name].shape[0]} rows, "
                           f"input_image has {rows}")
        if "input_productID" in handle and handle["input_productID"].dtype.kind not in "iu":
            report.add(file, "dataset", "input_productID",
                       f"expected integers, found {handle['input_productID'].dtype}")
        for start in range(0, rows, HDF5_CHUNK):
            stop = min(rows, start + HDF5_CHUNK)
            for name in ("input_name", "input_description", "input_category",
                         "input_subcategory"):
                if name not in handle or handle[name].shape[0] != rows:
                    continue
                column = handle[name]
                if column.dtype.kind not in "SO":
                    if start == 0:
                        report.add(file, "dataset", name,
                                   f"expected byte strings, found {column.dtype}")
                    continue
                for offset, raw in enumerate(column[start:stop].reshape(-1)):
                    raw = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
                    text, warning = decode_bytes(raw)
                    if warning:
                        report.add(file, f"row {start + offset}", name, warning, WARNING)
                    problem = text_problem(text)
                    if problem:
                        report.add(file, f"row {start + offset}", name, problem)
            if decode_images and images.dtype == np.uint8 and images.ndim == 4:
                block = images[start:stop]
                flat = block.reshape(block.shape[0], -1)
                for offset in np.flatnonzero(flat.min(axis=1) == flat.max(axis=1)):
                    report.add(file, f"row {start + int(offset)}", "input_image",
                               "blank image (one value everywhere)")
    return rows


def _known_fashiongen_ids(root: Path, train: Optional[list]) -> Tuple[Optional[Set[int]],
                                                                       Optional[Set[int]]]:
    """Category and subcategory ids: the synthetic manifest's, else train's."""
    manifest = root / "synth_manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return set(range(len(data["categories"]))), {s["id"] for s in data["subcategories"]}
        except (ValueError, KeyError, TypeError):
            pass
    if isinstance(train, list):
        entries = [e for e in train if isinstance(e, dict)]
        return ({e.get("category_id") for e in entries}, {e.get("subcategory_id") for e in entries})
    return None, None


def check_fashiongen(root: Path, report: Report, decode_images: bool = True) -> None:
    folder = root / "fashiongen"
    counts: Dict[str, Any] = {}
    images = ImageChecker(root, report, decode_images)
    for name in HDF5_FILES:
        if (folder / name).is_file():
            counts[f"{name.split('_')[-1][:-3]}_h5_rows"] = check_fashiongen_hdf5(
                folder / name, root, report, decode_images)
    vocabulary_size = None
    if (folder / "attributes.json").is_file():
        data = load_json_checked(folder / "attributes.json", root, report)
        if isinstance(data, dict) and isinstance(data.get("attributes"), list):
            vocabulary_size = len(data["attributes"])
            counts["attributes"] = vocabulary_size
        elif data is not None:
            report.add("fashiongen/attributes.json", "file", "attributes", "expected a list")
    infos = {split: load_json_checked(folder / f"{split}_info.json", root, report)
             for split in INFO_SPLITS if (folder / f"{split}_info.json").is_file()}
    known_categories, known_subcategories = _known_fashiongen_ids(root, infos.get("train"))
    owner: Dict[Any, str] = {}
    for split, entries in infos.items():
        file = f"fashiongen/{split}_info.json"
        if entries is None:
            continue
        if not isinstance(entries, list):
            report.add(file, "file", "-", "expected a JSON list of products")
            continue
        counts[f"{split}_products"] = len(entries)
        counts[f"{split}_images"] = 0
        for index, entry in enumerate(entries):
            record = f"entry {index}" + (f" (id {entry.get('id')})" if isinstance(entry, dict)
                                         else "")
            if not isinstance(entry, dict):
                report.add(file, record, "-", "not a JSON object")
                continue
            for name, kind in INFO_FIELDS.items():
                if name not in entry:
                    report.add(file, record, name, "field missing")
                elif not isinstance(entry[name], kind) or isinstance(entry[name], bool):
                    report.add(file, record, name, f"expected {kind.__name__}, found "
                               f"{type(entry[name]).__name__}")
            caption = f"{entry.get('title', '')} {entry.get('description', '')}"
            problem = text_problem(caption) if all(isinstance(entry.get(k), str)
                                                   for k in ("title", "description")) else None
            if problem:
                report.add(file, record, "title+description", problem)
            product_id = entry.get("id")
            if product_id in owner and isinstance(product_id, int):
                report.add(file, record, "id", f"product id also in {owner[product_id]}")
            owner[product_id] = file
            for name, known in (("category_id", known_categories),
                                ("subcategory_id", known_subcategories)):
                value = entry.get(name)
                if known is not None and isinstance(value, int) and value not in known:
                    report.add(file, record, name, f"unknown category id {value}",
                               kind="unknown category id")
            attribute_ids = entry.get("attributes_id")
            if isinstance(attribute_ids, list) and vocabulary_size is not None:
                bad = [a for a in attribute_ids if not isinstance(a, int)
                       or not 0 <= a < vocabulary_size]
                if bad:
                    report.add(file, record, "attributes_id",
                               f"ids {bad[:5]} outside the {vocabulary_size} attributes",
                               kind="attribute ids outside the vocabulary")
            paths = entry.get("images")
            if isinstance(paths, list):
                if not paths:
                    report.add(file, record, "images", "no images")
                for position, relative in enumerate(paths):
                    images.check(folder, relative, file, record, f"images[{position}]")
                counts[f"{split}_images"] += len(paths)
    for split in INFO_SPLITS:
        if (folder / f"regions_{split}.json").is_file():
            counts[f"{split}_regions"] = _check_regions(root, split, images, report)
    if counts:
        report.counts["fashiongen"] = counts


def _check_regions(root: Path, split: str, images: ImageChecker, report: Report) -> int:
    file = f"fashiongen/regions_{split}.json"
    records = load_json_checked(root / file, root, report)
    if records is None:
        return 0
    if not isinstance(records, list):
        report.add(file, "file", "-", "expected a JSON list")
        return 0
    total = 0
    for index, item in enumerate(records):
        record = f"entry {index}"
        if not isinstance(item, dict) or "image" not in item or not isinstance(
                item.get("regions"), list):
            report.add(file, record, "image/regions", "expected {'image': path, 'regions': [...]}")
            continue
        size = images.check(root / "fashiongen", item["image"], file, record, "image")
        for position, region in enumerate(item["regions"]):
            where = f"{record} ({item['image']})"
            if not isinstance(region, dict):
                report.add(file, where, f"regions[{position}]", "not a JSON object")
                continue
            problem = box_problem(region.get("box"), size)
            if problem:
                report.add(file, where, f"regions[{position}].box", problem, kind="invalid box")
            problem = text_problem(region.get("phrase"))
            if problem:
                report.add(file, where, f"regions[{position}].phrase", problem)
            total += 1
    return total


# ------------------------------------------------------------------ fashioniq
def check_fashioniq(root: Path, report: Report, decode_images: bool = True) -> None:
    folder = root / "fashioniq"
    images = ImageChecker(root, report, decode_images)
    counts: Dict[str, Any] = {"pairs": 0, "gallery_images": 0}
    for path in sorted((folder / "image_splits").glob("split.*.json")):
        file = relative_to_root(path, root)
        category = path.name.split(".")[1]
        if category not in FASHIONIQ_CATEGORIES:
            report.add(file, "file", "category", f"unknown FashionIQ category {category!r}",
                       WARNING)
        asins = load_json_checked(path, root, report)
        if not isinstance(asins, list):
            if asins is not None:
                report.add(file, "file", "-", "expected a JSON list of asins")
            continue
        counts["gallery_images"] += len(asins)
        for index, asin in enumerate(asins):
            _check_asin_image(folder, asin, images, file, f"entry {index}", "asin", report)
    for path in sorted((folder / "captions").glob("cap.*.json")):
        file = relative_to_root(path, root)
        _, category, split, _ = path.name.split(".", 3)
        gallery_path = folder / "image_splits" / f"split.{category}.{split}.json"
        gallery = set(load_json_checked(gallery_path, root, Report(str(root))) or []) \
            if gallery_path.is_file() else None
        pairs = load_json_checked(path, root, report)
        if not isinstance(pairs, list):
            if pairs is not None:
                report.add(file, "file", "-", "expected a JSON list of pairs")
            continue
        counts["pairs"] += len(pairs)
        for index, pair in enumerate(pairs):
            record = f"entry {index}"
            if not isinstance(pair, dict):
                report.add(file, record, "-", "not a JSON object")
                continue
            for name in ("candidate", "target"):
                asin = pair.get(name)
                if not isinstance(asin, str) or not asin:
                    report.add(file, record, name, "field missing or not a string")
                    continue
                _check_asin_image(folder, asin, images, file, record, name, report)
                if gallery is not None and asin not in gallery:
                    report.add(file, record, name, f"{asin} is not in {relative_to_root(gallery_path, root)}",
                               WARNING, kind="asin not in the split file")
            captions = pair.get("captions")
            if not isinstance(captions, list) or not captions:
                report.add(file, record, "captions", "field missing or empty")
                continue
            for position, caption in enumerate(captions):
                problem = text_problem(caption)
                if problem:
                    report.add(file, record, f"captions[{position}]", problem)
    if counts["pairs"] or counts["gallery_images"]:
        report.counts["fashioniq"] = counts


def _check_asin_image(folder: Path, asin: Any, images: ImageChecker, file: str, record: str,
                      field_name: str, report: Report) -> None:
    if not isinstance(asin, str) or not asin:
        report.add(file, record, field_name, "asin missing or not a string")
        return
    jpg_only = (folder / "images" / f"{asin}.jpg").is_file() and \
        not (folder / "images" / f"{asin}.png").is_file()
    images.check(folder, f"images/{asin}{'.jpg' if jpg_only else '.png'}", file, record,
                 field_name)


# ------------------------------------------------------------------ polyvore
def _read_categories(path: Path, root: Path, report: Report) -> Set[str]:
    known: Set[str] = set()
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or (number == 1 and not row[0].strip().isdigit()):
                continue  # blank line or a header
            if len(row) < 2:
                report.add(relative_to_root(path, root), f"line {number}", "-", "expected id,name[,semantic]")
                continue
            known.add(row[0].strip())
    return known


def check_polyvore(root: Path, report: Report, decode_images: bool = True) -> None:
    folder = root / "polyvore_outfits"
    images = ImageChecker(root, report, decode_images)
    metadata_file = "polyvore_outfits/polyvore_item_metadata.json"
    metadata = load_json_checked(folder / "polyvore_item_metadata.json", root, report) \
        if (folder / "polyvore_item_metadata.json").is_file() else None
    if metadata is None:
        report.add(metadata_file, "file", "-", "missing: outfits cannot be resolved")
        metadata = {}
    known = _read_categories(folder / "categories.csv", root, report) \
        if (folder / "categories.csv").is_file() else None
    for item_id, item in metadata.items():
        record = f"item {item_id}"
        if not isinstance(item, dict):
            report.add(metadata_file, record, "-", "not a JSON object")
            continue
        for name in ("category_id", "semantic_category", "title"):
            if name not in item:
                report.add(metadata_file, record, name, "field missing")
        if "catgeories" not in item and "categories" not in item:
            report.add(metadata_file, record, "catgeories", "field missing", WARNING)
        if known is not None and "category_id" in item and str(item["category_id"]) not in known:
            report.add(metadata_file, record, "category_id",
                       f"unknown category id {item['category_id']} (not in categories.csv)",
                       kind="unknown category id")
    counts: Dict[str, Any] = {"items": len(metadata)}
    for version in ("disjoint", "nondisjoint"):
        if (folder / version).is_dir():
            _check_polyvore_version(root, folder, version, metadata, images, report, counts)
    report.counts["polyvore_outfits"] = counts


def _check_polyvore_version(root: Path, folder: Path, version: str, metadata: Dict,
                            images: ImageChecker, report: Report, counts: Dict) -> None:
    split_items: Dict[str, Set[str]] = {}
    refs: Dict[str, Dict[str, str]] = {}
    for split in POLYVORE_SPLITS:
        file = f"polyvore_outfits/{version}/{split}.json"
        outfits = load_json_checked(root / file, root, report) if (root / file).is_file() else None
        if not isinstance(outfits, list):
            if (root / file).is_file() and outfits is not None:
                report.add(file, "file", "-", "expected a JSON list of outfits")
            continue
        counts[f"{version}_{split}_outfits"] = len(outfits)
        split_items[split], refs[split] = set(), {}
        for index, outfit in enumerate(outfits):
            set_id = outfit.get("set_id") if isinstance(outfit, dict) else None
            record = f"set_id {set_id}" if set_id is not None else f"entry {index}"
            if not isinstance(outfit, dict) or not isinstance(outfit.get("items"), list):
                report.add(file, record, "items", "field missing or not a list")
                continue
            for position, item in enumerate(outfit["items"]):
                item_id = str(item.get("item_id")) if isinstance(item, dict) else None
                if item_id is None or item_id not in metadata:
                    report.add(file, record, f"items[{position}].item_id",
                               f"unknown item id {item_id}", kind="unknown item id")
                    continue
                images.check(folder, f"images/{item_id}.jpg", file, record,
                             f"items[{position}].item_id")
                split_items[split].add(item_id)
                refs[split][f"{set_id}_{item.get('index', position + 1)}"] = item_id
    if version == "disjoint":
        for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
            shared = split_items.get(a, set()) & split_items.get(b, set())
            if shared:
                report.add(f"polyvore_outfits/{version}/{b}.json", f"{len(shared)} items",
                           "item_id", f"items shared with {a} in the disjoint version, e.g. "
                           f"{sorted(shared)[:3]}")
    for split, known_refs in refs.items():
        _check_polyvore_tasks(root, version, split, known_refs, report)
    for split in ("train", "test"):
        _check_ocir(root, version, split, metadata, split_items.get(split), report)


def _check_polyvore_tasks(root: Path, version: str, split: str, known_refs: Dict[str, str],
                          report: Report) -> None:
    file = f"polyvore_outfits/{version}/fill_in_blank_{split}.json"
    if (root / file).is_file():
        questions = load_json_checked(root / file, root, report)
        for index, question in enumerate(questions if isinstance(questions, list) else []):
            for name in ("question", "answers"):
                values = question.get(name) if isinstance(question, dict) else None
                if not isinstance(values, list) or not values:
                    report.add(file, f"entry {index}", name, "field missing or empty")
                    continue
                unknown = [v for v in values if v not in known_refs]
                if unknown:
                    report.add(file, f"entry {index}", name,
                               f"unknown outfit items {unknown[:3]}", kind="unknown outfit items")
    file = f"polyvore_outfits/{version}/compatibility_{split}.txt"
    if (root / file).is_file():
        for number, line in enumerate((root / file).read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if fields[0] not in ("0", "1"):
                report.add(file, f"line {number}", "label", f"expected 0 or 1, found {fields[0]}",
                           kind="label not 0 or 1")
            unknown = [v for v in fields[1:] if v not in known_refs]
            if unknown:
                report.add(file, f"line {number}", "items", f"unknown outfit items {unknown[:3]}",
                           kind="unknown outfit items")


def _check_ocir(root: Path, version: str, split: str, metadata: Dict,
                split_items: Optional[Set[str]], report: Report) -> None:
    file = f"polyvore_outfits/ocir_{version}_{split}.json"
    if not (root / file).is_file():
        return
    questions = load_json_checked(root / file, root, report)
    if not isinstance(questions, list):
        if questions is not None:
            report.add(file, "file", "-", "expected a JSON list")
        return
    for index, question in enumerate(questions):
        record = f"entry {index}"
        if not isinstance(question, dict):
            report.add(file, record, "-", "not a JSON object")
            continue
        items = question.get("question")
        if not isinstance(items, list) or not items:
            report.add(file, record, "question", "field missing or empty")
        else:
            unknown = [i for i in items if str(i) not in metadata]
            if unknown:
                report.add(file, record, "question", f"unknown item ids {unknown[:3]}",
                           kind="unknown item id")
        blank = question.get("blank")
        if blank is None or str(blank) not in metadata:
            report.add(file, record, "blank", f"unknown item id {blank}", kind="unknown item id")
        elif split_items is not None and str(blank) not in split_items:
            report.add(file, record, "blank", f"item {blank} is not in the {split} outfits",
                       kind=f"blank not in the {split} outfits")


# ------------------------------------------------------------------ entry point
def check_data_dir(root: Union[str, Path], decode_images: bool = True,
                   sources: Optional[Sequence[str]] = None) -> Report:
    """Check every source present under ``root`` (or only ``sources``)."""
    root = Path(root)
    report = Report(str(root))
    if not root.is_dir():
        report.add(str(root), "directory", "-", "data directory does not exist")
        return report
    checkers = {"fashiongen": check_fashiongen, "fashioniq": check_fashioniq,
                "polyvore_outfits": check_polyvore}
    present = [name for name in checkers if (root / name).is_dir()]
    if sources is not None:
        present = [name for name in present if name in sources]
    if not present:
        report.add(str(root), "directory", "-",
                   f"none of {', '.join(checkers)} found: not a data directory")
    for name in present:
        checkers[name](root, report, decode_images)
    return report
