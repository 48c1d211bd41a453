"""FashionIQ (TGIR) as an MMF dataset: reference image + relative captions -> target.

Cheatsheet::

    dataset = build_dataset("fashioniq", config.dataset_config.fashioniq, "val")
    sample = dataset[0]
    sample.reference_image, sample.target_image     # (3, H, W)
    sample.input_ids, sample.text                   # captions joined with " and "
    sample.reference_id, sample.target_id           # index into dataset.gallery_asins
    sample.fashioniq_category                       # 0 dress, 1 shirt, 2 toptee

    gallery = dataset.gallery_dataset()             # evaluation gallery
    gallery[0].image, gallery[0].target_id, gallery[0].fashioniq_category
    loader = DataLoader(gallery, batch_size=64, collate_fn=BatchCollator("fashioniq", "val"))

The gallery: every image of the split's image_splits/split.<category>.<split>.json
(``gallery: split``, the standard protocol; queries rank only the gallery
images of their own category, which the metric reads from
fashioniq_category) or only the split's unique targets (``gallery:
unique_targets``, what FashionViL's code used). reference_id / target_id
index ``dataset.gallery_asins`` (the split's images in file order, plus any
caption asin missing from the split file, appended).
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch
from mmf.common.sample import Sample

from mmf_fashion.datasets.base import FashionDataset, GalleryDataset
from mmf_fashion.datasets.common import BadSampleError, decode_text, read_json, require_field, require_text

CATEGORIES = ("dress", "shirt", "toptee")


class FashionIQDataset(FashionDataset):
    def __init__(self, config, dataset_type="train", *args, **kwargs):
        super().__init__("fashioniq", config, dataset_type, *args, **kwargs)
        self.categories: List[str] = [str(c) for c in self.option("categories", list(CATEGORIES))]
        self.caption_join = str(self.option("caption_join", " and "))
        self.shuffle_captions = bool(self.option("shuffle_captions_in_train", True)) and self.is_train
        self.gallery_mode = str(self.option("gallery", "split"))
        if self.gallery_mode not in ("split", "unique_targets"):
            raise ValueError(
                f"dataset_config.fashioniq.gallery must be split or unique_targets, got '{self.gallery_mode}'"
            )
        self.image_dir = str(self.option("image_dir", "fashioniq/images"))
        self.image_extensions = [str(e) for e in self.option("image_extensions", [".png", ".jpg"])]
        split = str((self.option("split_names", {}) or {}).get(dataset_type, dataset_type))
        captions_dir = str(self.option("captions_dir", "fashioniq/captions"))
        splits_dir = str(self.option("image_splits_dir", "fashioniq/image_splits"))

        self.gallery_asins: List[str] = []
        self.gallery_categories: List[int] = []
        self.gallery_origins: List[Tuple[str, str]] = []  # (file, record) that first named each
        self.asin_index: Dict[Tuple[str, int], int] = {}
        self._missing_images = None  # (missing, total) asins of the split, counted on first need
        appended = 0
        for category_index, category in enumerate(self.categories):
            split_path = self._config_file(f"{splits_dir}/split.{category}.{split}.json")
            if os.path.isfile(split_path):
                asins = read_json(split_path)
                if not isinstance(asins, list):
                    raise ValueError(f"{split_path}: expected a JSON list of asins")
                for position, asin in enumerate(asins):
                    try:
                        record = f"entry {position}"
                        self._gallery_index(
                            decode_text(asin, file=split_path, record=record, field="asin"),
                            category_index,
                            (split_path, record),
                        )
                    except BadSampleError as error:
                        self.handle_bad(error, at_load=True)
            else:
                self.log(f"fashioniq: {split_path} not found; the gallery holds the caption asins only")
            captions_path = self._config_file(f"{captions_dir}/cap.{category}.{split}.json")
            if not os.path.isfile(captions_path):
                raise FileNotFoundError(f"fashioniq: captions file {captions_path} does not exist")
            entries = read_json(captions_path)
            if not isinstance(entries, list):
                raise ValueError(f"{captions_path}: expected a JSON list of {{candidate, target, captions}}")
            for position, entry in enumerate(entries):
                record = f"entry {position}"
                try:
                    candidate = decode_text(
                        require_field(entry, "candidate", file=captions_path, record=record),
                        file=captions_path,
                        record=record,
                        field="candidate",
                    )
                    target = decode_text(
                        require_field(entry, "target", file=captions_path, record=record),
                        file=captions_path,
                        record=record,
                        field="target",
                    )
                    record = f"entry {position} ({candidate} -> {target})"
                    captions = self._captions(
                        require_field(entry, "captions", file=captions_path, record=record), captions_path, record
                    )
                except BadSampleError as error:
                    self.handle_bad(error, at_load=True)
                    continue
                before = len(self.gallery_asins)
                reference_id = self._gallery_index(candidate, category_index, (captions_path, record))
                target_id = self._gallery_index(target, category_index, (captions_path, record))
                appended += len(self.gallery_asins) - before
                self.items.append((reference_id, target_id, captions, category_index, captions_path, record))
        if appended:
            self.log(
                f"fashioniq/{dataset_type}: {appended} caption asins were not in the split files; added to the gallery"
            )
        max_samples = self.option("max_samples")
        if max_samples:
            self.items = self.items[: int(max_samples)]
        self.finish_loading()

    def _config_file(self, relative: str) -> str:
        return self.data_path(relative, file="dataset_config.fashioniq", record="files", field="files")

    def _gallery_index(self, asin: str, category_index: int, origin: Tuple[str, str]) -> int:
        key = (asin, category_index)
        if key not in self.asin_index:
            self.asin_index[key] = len(self.gallery_asins)
            self.gallery_asins.append(asin)
            self.gallery_categories.append(category_index)
            self.gallery_origins.append(origin)
        return self.asin_index[key]

    def _captions(self, value, file: str, record: str) -> List[str]:
        if not isinstance(value, list):
            raise BadSampleError(
                file, record, "captions", f"expected a list of captions, got {value!r}", "missing_field"
            )
        texts = [
            " ".join(decode_text(c, file=file, record=record, field=f"captions[{i}]").split())
            for i, c in enumerate(value)
        ]
        texts = [t for t in texts if t]
        require_text(" ".join(texts), file=file, record=record, field="captions")
        return texts

    def image_path(self, asin: str, *, file: str, record: str, field: str) -> str:
        candidates = [
            self.data_path(f"{asin}{ext}", file=file, record=record, field=field, root=self.image_dir)
            for ext in self.image_extensions
        ]
        for path in candidates:
            if os.path.isfile(path):
                return path
        missing, total = self.missing_images()
        raise BadSampleError(
            file,
            record,
            field,
            f"no image for asin {asin}: tried {', '.join(candidates)}. "
            f"{missing} of the {total} images of the {self.dataset_type} split are missing "
            f"(the real FashionIQ has images that can no longer be downloaded). "
            f"To go on without their records: dataset_config.{self.dataset_name}.on_bad_sample=skip "
            "(skips are counted and reported at every epoch end)",
            "missing_image",
        )

    def missing_images(self) -> Tuple[int, int]:
        """(missing, total) distinct asins of this split without an image file:
        one os.path check per asin and extension, done once per dataset
        instance (each DataLoader worker counts for itself)."""
        if self._missing_images is None:
            folder = os.path.join(self.data_dir, self.image_dir)
            asins = set(self.gallery_asins)
            missing = sum(
                1
                for asin in asins
                if not any(os.path.isfile(os.path.join(folder, f"{asin}{ext}")) for ext in self.image_extensions)
            )
            self._missing_images = (missing, len(asins))
        return self._missing_images

    def load_asin(self, gallery_index: int, *, file: str, record: str, field: str, is_train: bool) -> torch.Tensor:
        asin = self.gallery_asins[gallery_index]
        image = self.load_image(
            self.image_path(asin, file=file, record=record, field=field), file=file, record=record, field=field
        )
        return self.require_processor("image_processor")({"image": image, "is_train": is_train})["image"]

    def build_sample(self, index: int) -> Sample:
        reference_id, target_id, captions, category_index, file, record = self.items[index]
        if self.shuffle_captions and len(captions) > 1:
            captions = [captions[i] for i in torch.randperm(len(captions)).tolist()]
        text = self.caption_join.join(captions)
        sample = Sample()
        sample.reference_image = self.load_asin(
            reference_id, file=file, record=record, field="candidate", is_train=self.is_train
        )
        sample.target_image = self.load_asin(
            target_id, file=file, record=record, field="target", is_train=self.is_train
        )
        for key, value in self.require_processor("text_processor")({"text": text}).items():
            sample[key] = value
        sample.text = text
        sample.reference_id = torch.tensor(reference_id, dtype=torch.long)
        sample.target_id = torch.tensor(target_id, dtype=torch.long)
        sample.fashioniq_category = torch.tensor(category_index, dtype=torch.long)
        return sample

    def gallery_indices(self) -> List[int]:
        if self.gallery_mode == "unique_targets":
            return sorted({item[1] for item in self.items})
        return list(range(len(self.gallery_asins)))

    def gallery_image(self, index: int) -> torch.Tensor:
        """Gallery image `index` in eval transforms (GalleryDataset reads it)."""
        file, origin = self.gallery_origins[index]
        record = f"gallery image {index} ({self.gallery_asins[index]}, {origin})"
        return self.load_asin(index, file=file, record=record, field="image", is_train=False)

    def gallery_dataset(self) -> GalleryDataset:
        """The evaluation gallery: a torch Dataset of Samples {image,
        target_id, fashioniq_category} (collate with MMF's BatchCollator)."""
        return GalleryDataset(self, self.gallery_indices(), id_key="target_id", category_key="fashioniq_category")

    def label_counts(self) -> Dict[str, int]:
        return {"num_categories": len(self.categories), "gallery_size": len(self.gallery_asins)}
