"""ALIGN (ICML 2021): a dual encoder trained with a two-way contrastive loss.

Cheatsheet::

    mmf_run config=projects/align/configs/pretrain.yaml model=align dataset=fashiongen
    mmf_run config=projects/align/configs/zeroshot_scr.yaml model=align dataset=fashiongen run_type=val

    model = registry.get_model_class("align")(config); model.build()
    out = model(sample_list)           # train: {"losses": {"train/fashiongen/itc": ...}}
    model.embed_images(images)         # (N, D) unit norm   (retrieval interface)
    model.embed_texts(["red dress"])   # (N, D) unit norm
    model.zeroshot_scores(images)      # (N, C) over the class prompts

Heads (``model_config.align.head``):
- ``contrastive``: training loss = symmetric InfoNCE with a learnable
  temperature and optional label smoothing, negatives gathered from every
  rank (``modules.losses.contrastive_loss``); eval returns
  ``image_embedding`` and ``text_embedding`` (B, D) for r@k metrics.
- ``zeroshot``: classification by text prompts. Each class name is put into
  the templates ("a photo of a {}" ...), the prompts are embedded and
  averaged per class; ``scores`` (B, C) = scale * image @ class^T, so MMF's
  accuracy / macro_f1 apply to SCR with no fine-tuning. In training mode the
  same scores get a cross entropy against ``targets`` (prompt fine-tuning).

Where the class names come from (first that is set wins; index = class id =
the dataset's ``targets``):
1. ``zeroshot.class_names``: an explicit list;
2. ``zeroshot.class_names_file``: a JSON file holding a list, a
   {"<id>": name} mapping, a list of {"id", "name"} objects, or an object
   with one of the keys ``subcategory_names`` / ``subcategories`` /
   ``class_names`` (relative paths are tried under ``env.data_dir`` first);
3. the dataset's own label vocabulary: the registry key
   ``<dataset>_<label_field>_names`` that the builder registers after
   loading a split (``fashiongen_subcategory_names``: the fashiongen
   builder's names from dataset_config.fashiongen.subcategory_names, the
   synthetic world's manifest or the HDF5 ``input_subcategory`` column,
   ``FashionGenDataset.label_names``). Under ``mmf_run`` the datasets are
   loaded before the first forward, so this is the usual source;
4. ``zeroshot.class_names_source: synthetic``: the generator's vocabulary
   (``mmf_fashion.data.synth.vocab.SUBCATEGORIES``), for use without data.
Names are lower-cased for the prompts (``zeroshot.lowercase``, default true).

Input keys (sample list): ``image`` (B, 3, H, W); ``input_ids``,
``attention_mask`` (B, L); optional ``image_2`` (B, 3, H, W) with
``average_views: true``; ``targets`` (B,) for the zeroshot head's loss.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel

from mmf_fashion.modules.losses import LogitScale, contrastive_loss
from mmf_fashion.modules.two_stream import TwoStreamMixin, average_view_embeddings, config_flag

CONTRASTIVE = "contrastive"
ZEROSHOT = "zeroshot"
HEADS = (CONTRASTIVE, ZEROSHOT)
CLASS_NAME_KEYS = ("subcategory_names", "subcategories", "class_names")


def _loss_key(sample_list, name: str) -> str:
    dataset_type = getattr(sample_list, "dataset_type", None) or sample_list.get("dataset_type", "train")
    dataset_name = getattr(sample_list, "dataset_name", None) or sample_list.get("dataset_name", "fashiongen")
    return f"{dataset_type}/{dataset_name}/{name}"


def read_class_names_file(path: str) -> List[str]:
    """Class names from a JSON list, {"<id>": name} mapping or an object with a names key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"zeroshot.class_names_file '{path}': no such file")
    with open(path, encoding="utf-8") as handle:
        try:
            content = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"zeroshot.class_names_file '{path}': not valid JSON ({error})") from error
    if isinstance(content, dict):
        for key in CLASS_NAME_KEYS:
            if key in content:
                content = content[key]
                break
    if isinstance(content, dict):
        try:
            ordered = sorted(content.items(), key=lambda item: int(item[0]))
        except ValueError as error:
            raise ValueError(f"{path}: expected integer class ids as keys, got {list(content)[:5]}") from error
        ids = [int(key) for key, _ in ordered]
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: class ids must be 0..{len(ids) - 1} without gaps, got {ids[:10]} ...")
        content = [name for _, name in ordered]
    if not isinstance(content, list) or not content:
        raise ValueError(
            f"{path}: expected a non-empty list of class names, an {{id: name}} object or one of the keys {CLASS_NAME_KEYS}"
        )
    if all(isinstance(entry, dict) and "id" in entry for entry in content):
        content = sorted(content, key=lambda entry: int(entry["id"]))  # the synthetic manifest's form
    names = []
    for index, entry in enumerate(content):
        if isinstance(entry, dict):
            entry = entry.get("name")
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{path}: class {index} has no usable name (got {entry!r})")
        names.append(entry)
    return names


def synthetic_class_names() -> List[str]:
    from mmf_fashion.data.synth.vocab import SUBCATEGORIES

    return [subcategory.name for subcategory in SUBCATEGORIES]


def _data_dir(global_config) -> str:
    try:
        return str(global_config.env.data_dir or "")
    except Exception:  # no global config (plain torch use)
        return ""


def resolve_class_names(zeroshot: Mapping, global_config=None, registry_=None) -> List[str]:
    """The class names of the zeroshot head, from the first source that has them
    (see the module docstring for the order). ``registry_`` is MMF's registry
    (where the dataset builder published its vocabulary)."""
    explicit = zeroshot.get("class_names", None)
    if explicit:
        return [str(name) for name in explicit]
    path = zeroshot.get("class_names_file", None)
    if path:
        path = str(path)
        data_dir = _data_dir(global_config)
        if not os.path.isabs(path) and data_dir and os.path.exists(os.path.join(data_dir, path)):
            path = os.path.join(data_dir, path)
        return read_class_names_file(path)
    dataset = str(zeroshot.get("dataset", "fashiongen"))
    label_field = str(zeroshot.get("label_field", "subcategory"))
    key = f"{dataset}_{label_field}_names"
    if registry_ is not None:
        registered = registry_.get(key, no_warning=True)
        if registered:
            return [str(name) for name in registered]
    if zeroshot.get("class_names_source", None) == "synthetic":
        return synthetic_class_names()
    raise ValueError(
        f"align zeroshot head: no class names. The '{dataset}' dataset registers '{key}' when it is loaded "
        f"and its {label_field} names are known (fashiongen: dataset_config.fashiongen.{label_field}_names, "
        "the synthetic manifest or the HDF5 columns; JSON files carry ids only); otherwise set "
        "model_config.align.zeroshot.class_names (a list), zeroshot.class_names_file (JSON) or "
        "zeroshot.class_names_source: synthetic."
    )


@registry.register_model("align")
class ALIGN(TwoStreamMixin, BaseModel):
    """ALIGN dual encoder: EfficientNet-style image tower + BERT [CLS] text tower."""

    def __init__(self, config):
        super().__init__(config)
        self._class_embedding_cache: Optional[torch.Tensor] = None

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "configs", "align.yaml")

    def build(self):
        config = self.config
        self.head = str(config.get("head", CONTRASTIVE))
        if self.head not in HEADS:
            raise ValueError(f"model_config.align.head must be one of {HEADS}, got '{self.head}'")
        self.build_towers(
            image_encoder=config.get("image_encoder", "efficientnet_b0"),
            image_pretrained=config.get("image_pretrained", None),
            text_encoder=config.get("text_encoder", None),
            embed_dim=int(config.get("embed_dim", 640)),
            text_pooling=str(config.get("text_pooling", "cls")),
        )
        self.logit_scale = LogitScale(
            init=1.0 / float(config.get("temperature", 0.07)),
            learnable=config_flag(config.get("learnable_temperature", True), "model_config.align.learnable_temperature"),
            max_value=float(config.get("max_scale", 100.0)),
        )
        self.label_smoothing = float(config.get("label_smoothing", 0.1))
        self.gather_negatives = config_flag(config.get("gather_negatives", True), "model_config.align.gather_negatives")
        self.average_views = config_flag(config.get("average_views", False), "model_config.align.average_views")
        zeroshot = config.get("zeroshot", None) or {}
        self.templates = list(zeroshot.get("templates", None) or ["a photo of a {}"])
        for template in self.templates:
            if "{}" not in template:
                raise ValueError(f"zeroshot template '{template}' must contain '{{}}' where the class name goes")
        self.prompt_max_length = int(zeroshot.get("max_length", 16))
        self._zeroshot_config = zeroshot
        self._class_names: Optional[List[str]] = None

    # ------------------------------------------------------------ zero-shot
    def class_names(self) -> List[str]:
        if self._class_names is None:
            names = resolve_class_names(self._zeroshot_config, registry.get("config", no_warning=True), registry)
            if config_flag(self._zeroshot_config.get("lowercase", True), "model_config.align.zeroshot.lowercase"):
                names = [name.lower() for name in names]
            self._class_names = names
        return self._class_names

    def set_class_names(self, names: List[str]) -> None:
        self._class_names = [str(name) for name in names]
        self._class_embedding_cache = None

    def prompts(self) -> List[str]:
        """Every class name in every template, class-major: C * T prompts."""
        return [template.format(name) for name in self.class_names() for template in self.templates]

    def class_embeddings(self) -> torch.Tensor:
        """(C, D) unit norm: the mean of the class's prompt embeddings (cached in eval mode)."""
        if not self.training and self._class_embedding_cache is not None:
            return self._class_embedding_cache
        tokens = self.tokenize(self.prompts(), max_length=self.prompt_max_length)
        prompt_embeddings = self.encode_text(tokens["input_ids"], tokens["attention_mask"])
        per_class = prompt_embeddings.reshape(len(self.class_names()), len(self.templates), -1)
        embeddings = average_view_embeddings(per_class)
        if not self.training:
            self._class_embedding_cache = embeddings.detach()
        return embeddings

    def zeroshot_scores(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> logits (B, C) over the class prompts."""
        return self.logit_scale() * self.encode_image(images) @ self.class_embeddings().t()

    def train(self, mode: bool = True):
        self._class_embedding_cache = None  # the text tower may change
        return super().train(mode)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self._class_embedding_cache = None
        return super().load_state_dict(state_dict, *args, **kwargs)

    # -------------------------------------------------------------- forward
    def image_embedding(self, sample_list) -> torch.Tensor:
        embedding = self.encode_image(sample_list["image"])
        if self.average_views and sample_list.get("image_2", None) is not None:
            second = self.encode_image(sample_list["image_2"])
            embedding = average_view_embeddings(torch.stack([embedding, second], dim=1))
        return embedding

    def forward(self, sample_list) -> Dict:
        """sample_list keys: image (B, 3, H, W), input_ids / attention_mask (B, L)
        [contrastive]; image (+ targets (B,) for the loss) [zeroshot].

        Returns, contrastive: {"losses": {"<type>/<dataset>/itc": scalar},
        "image_embedding": (B, D), "text_embedding": (B, D)};
        zeroshot: {"losses": {".../zeroshot_ce": scalar} (when targets exist), "scores": (B, C)}.
        """
        if self.head == ZEROSHOT:
            return self._forward_zeroshot(sample_list)
        image_embedding = self.image_embedding(sample_list)
        text_embedding = self.encode_text(
            sample_list["input_ids"], sample_list["attention_mask"], sample_list.get("token_type_ids", None)
        )
        loss = contrastive_loss(
            image_embedding,
            text_embedding,
            self.logit_scale(),
            gather=self.gather_negatives and self.training,
            label_smoothing=self.label_smoothing if self.training else 0.0,
        )
        return {
            "losses": {_loss_key(sample_list, "itc"): loss},
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
        }

    def _forward_zeroshot(self, sample_list) -> Dict:
        scores = self.zeroshot_scores(sample_list["image"])
        output = {"scores": scores, "losses": {}}
        targets = sample_list.get("targets", None)
        if targets is not None:
            if int(targets.max()) >= scores.shape[1] or int(targets.min()) < 0:
                raise ValueError(
                    f"align zeroshot: targets go up to {int(targets.max())} but there are {scores.shape[1]} class "
                    "names; check zeroshot.class_names against the dataset's labels"
                )
            output["losses"][_loss_key(sample_list, "zeroshot_ce")] = F.cross_entropy(scores, targets.long())
        return output

