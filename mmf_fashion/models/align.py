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

Released weights (``model_config.align.pretrained``: a hub name such as
kakaobrain/align-base or a directory written by ``AlignModel.save_pretrained``;
null = the scratch EfficientNet + BERT build above, the default): the towers,
text projection and temperature are the checkpoint's (image embedding = the
vision pooler output, text embedding = text_projection of [CLS], both unit
norm, scale = 1 / temperature), so image_encoder, text_encoder, embed_dim,
text_pooling and temperature are not read. The text is then tokenised in the
model from the batch's raw ``text`` with the checkpoint's tokenizer (the
packaged uncased WordPiece, bert-base-uncased's vocabulary, when it has
none), so the batch, the prompts and embed_texts share one tokenizer; see
models/clip.py for why (``max_text_length``, default 40 as the dataset's,
truncates the batch text). The dataset's image size / mean / std follow the
checkpoint's image processor through the ``pretrained_image`` resolver
(projects/align/configs/zeroshot_scr.yaml), and ``image_transform()`` gives
the index the same pipeline. A checkpoint of another model_type is refused,
naming the directory and both types.

Config resolvers registered here (for project YAMLs):
- ``${pretrained_image:<source>,<size|mean|std>,<default>}``: the setting of
  the checkpoint's image processor, the default when there is no source
  (null) or it has no image processor;
- ``${unless_pretrained:<source>,<value>}``: value when no source is set,
  else null (the scratch model's pretraining checkpoint, not loaded over
  released weights).

Input keys (sample list): ``image`` (B, 3, H, W); ``input_ids``,
``attention_mask`` (B, L) (the scratch build) or ``text`` list[str] (released
weights); optional ``image_2`` (B, 3, H, W) with ``average_views: true``;
``targets`` (B,) for the zeroshot head's loss.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel

from mmf_fashion.modules import pretrained_towers as released_towers
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


def resolve_class_names(zeroshot: Mapping, global_config=None, registry_=None, model_name: str = "align") -> List[str]:
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
        f"{model_name} zeroshot head: no class names. The '{dataset}' dataset registers '{key}' when it is loaded "
        f"and its {label_field} names are known (fashiongen: dataset_config.fashiongen.{label_field}_names, "
        "the synthetic manifest or the HDF5 columns; JSON files carry ids only); otherwise set "
        f"model_config.{model_name}.zeroshot.class_names (a list), zeroshot.class_names_file (JSON) or "
        "zeroshot.class_names_source: synthetic."
    )


def _register_config_resolvers() -> None:
    """The YAML resolvers of the module docstring (once per process)."""
    from omegaconf import OmegaConf

    def pretrained_image(source, key, default=None):
        source = released_towers.pretrained_source(source)
        settings = released_towers.read_image_settings(source) if source else None
        if settings is None:
            return default
        values = settings.as_dict()
        if key not in values:
            raise KeyError(f"pretrained_image: key must be one of {sorted(values)}, got '{key}'")
        return values[key]

    def unless_pretrained(source, value=None):
        return value if released_towers.pretrained_source(source) is None else None

    # omegaconf 2.4 renamed register_new_resolver (now deprecated) to register_resolver
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    for name, function in (("pretrained_image", pretrained_image), ("unless_pretrained", unless_pretrained)):
        if not OmegaConf.has_resolver(name):
            register(name, function)


_register_config_resolvers()


class PromptZeroShot:
    """Zero-shot classification by text prompts, for dual encoders with
    encode_image / encode_text / tokenize / logit_scale (ALIGN and CLIP).

    configure_zeroshot(config, model_name) reads ``<model>.zeroshot`` (the keys
    of the module docstring); class_embeddings() (C, D) are cached in eval mode."""

    def configure_zeroshot(self, config, model_name: str) -> None:
        zeroshot = config.get("zeroshot", None) or {}
        self.templates = list(zeroshot.get("templates", None) or ["a photo of a {}"])
        for template in self.templates:
            if "{}" not in template:
                raise ValueError(f"zeroshot template '{template}' must contain '{{}}' where the class name goes")
        self.prompt_max_length = int(zeroshot.get("max_length", 16))
        self._zeroshot_config = zeroshot
        self._zeroshot_model_name = model_name
        self._class_names: Optional[List[str]] = None
        self._class_embedding_cache: Optional[torch.Tensor] = None

    def class_names(self) -> List[str]:
        if self._class_names is None:
            name = self._zeroshot_model_name
            names = resolve_class_names(self._zeroshot_config, registry.get("config", no_warning=True), registry, name)
            if config_flag(self._zeroshot_config.get("lowercase", True), f"model_config.{name}.zeroshot.lowercase"):
                names = [entry.lower() for entry in names]
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

    def forward_zeroshot(self, sample_list) -> Dict:
        """{"scores": (B, C), "losses": {".../zeroshot_ce": CE against targets, when present}}."""
        scores = self.zeroshot_scores(sample_list["image"])
        output = {"scores": scores, "losses": {}}
        targets = sample_list.get("targets", None)
        if targets is not None:
            if int(targets.max()) >= scores.shape[1] or int(targets.min()) < 0:
                raise ValueError(
                    f"{self._zeroshot_model_name} zeroshot: targets go up to {int(targets.max())} but there are "
                    f"{scores.shape[1]} class names; check zeroshot.class_names against the dataset's labels"
                )
            output["losses"][_loss_key(sample_list, "zeroshot_ce")] = F.cross_entropy(scores, targets.long())
        return output


def _packaged_wordpiece():
    from mmf_fashion.modules.encoders import build_tokenizer

    return build_tokenizer("minilm")  # uncased WordPiece: bert-base-uncased's vocabulary, as ALIGN's


@registry.register_model("align")
class ALIGN(PromptZeroShot, TwoStreamMixin, BaseModel):
    """ALIGN dual encoder: EfficientNet-style image tower + BERT [CLS] text tower."""

    def __init__(self, config):
        super().__init__(config)
        self.released = None

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "configs", "align.yaml")

    def build(self):
        config = self.config
        self.head = str(config.get("head", CONTRASTIVE))
        if self.head not in HEADS:
            raise ValueError(f"model_config.align.head must be one of {HEADS}, got '{self.head}'")
        learnable = config_flag(config.get("learnable_temperature", True), "model_config.align.learnable_temperature")
        max_scale = float(config.get("max_scale", 100.0))
        source = released_towers.pretrained_source(config.get("pretrained", None))
        if source:
            self._build_released(source, learnable, max_scale)
        else:
            self.build_towers(
                image_encoder=config.get("image_encoder", "efficientnet_b0"),
                image_pretrained=config.get("image_pretrained", None),
                text_encoder=config.get("text_encoder", None),
                embed_dim=int(config.get("embed_dim", 640)),
                text_pooling=str(config.get("text_pooling", "cls")),
            )
            self.logit_scale = LogitScale(
                init=1.0 / float(config.get("temperature", 0.07)), learnable=learnable, max_value=max_scale
            )
        self.label_smoothing = float(config.get("label_smoothing", 0.1))
        self.gather_negatives = config_flag(config.get("gather_negatives", True), "model_config.align.gather_negatives")
        self.average_views = config_flag(config.get("average_views", False), "model_config.align.average_views")
        self.configure_zeroshot(config, "align")

    def _build_released(self, source: str, learnable: bool, max_scale: float) -> None:
        released = released_towers.load_released(source, "align", fallback_tokenizer=_packaged_wordpiece)
        for name in released_towers.TOWER_NAMES:
            setattr(self, name, released.towers[name])
        self.released = released
        self.embed_dim = released.embed_dim
        self.text_pooling = "cls"  # AlignModel's text embedding
        self.max_text_length = int(self.config.get("max_text_length", 40))
        # the clamp may not cut the checkpoint's own scale
        self.logit_scale = LogitScale(init=released.logit_scale, learnable=learnable,
                                      max_value=max(max_scale, released.logit_scale))
        if released.image is not None:
            image = released.image
            self.image_transform = functools.partial(released_towers.eval_transform, image.size, image.mean, image.std)

    # ------------------------------------------------------ released weights
    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.released is None:
            return super().image_features(images)
        return released_towers.released_image_features("align", self.image_encoder, self.image_projection, images)

    def tokenizer(self):
        return super().tokenizer() if self.released is None else self.released.tokenizer

    def text_inputs(self, sample_list):
        """(input_ids, attention_mask, token_type_ids) of the batch's text. The scratch
        build reads the dataset's ids (the same packaged vocabulary as tokenize());
        released weights tokenise the raw text with the checkpoint's tokenizer."""
        if self.released is None:
            return sample_list["input_ids"], sample_list["attention_mask"], sample_list.get("token_type_ids", None)
        tokens = self.tokenize(released_towers.batch_texts(sample_list, "align"), max_length=self.max_text_length)
        return tokens["input_ids"], tokens["attention_mask"], None

    # -------------------------------------------------------------- forward
    def image_embedding(self, sample_list) -> torch.Tensor:
        embedding = self.encode_image(sample_list["image"])
        if self.average_views and sample_list.get("image_2", None) is not None:
            second = self.encode_image(sample_list["image_2"])
            embedding = average_view_embeddings(torch.stack([embedding, second], dim=1))
        return embedding

    def forward(self, sample_list) -> Dict:
        """sample_list keys: image (B, 3, H, W), input_ids / attention_mask (B, L) or,
        with released weights, text list[str] [contrastive]; image (+ targets (B,)
        for the loss) [zeroshot].

        Returns, contrastive: {"losses": {"<type>/<dataset>/itc": scalar},
        "image_embedding": (B, D), "text_embedding": (B, D)};
        zeroshot: {"losses": {".../zeroshot_ce": scalar} (when targets exist), "scores": (B, C)}.
        """
        if self.head == ZEROSHOT:
            return self.forward_zeroshot(sample_list)
        image_embedding = self.image_embedding(sample_list)
        text_embedding = self.encode_text(*self.text_inputs(sample_list))
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
