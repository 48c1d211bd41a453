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

import json
import os
from typing import List, Mapping

from mmf.common.registry import registry

from mmf_fashion.models.base import FashionModelBase
from mmf_fashion.modules import pretrained_towers as released_towers
from mmf_fashion.modules.align import ALIGNMethods, AlignOptions, PromptZeroShotMethods
from mmf_fashion.modules.two_stream import config_flag

CLASS_NAME_KEYS = ("subcategory_names", "subcategories", "class_names")


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
            f"{path}: expected a non-empty list of class names, an {{id: name}} object or one of the keys "
            f"{CLASS_NAME_KEYS}"
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


class PromptZeroShot(PromptZeroShotMethods):
    """The prompt classifier of modules/align.py whose class names come from the
    sources of the module docstring (looked up at the first use), for ALIGN and CLIP."""

    def configure_zeroshot(self, zeroshot: Mapping, model_name: str) -> None:
        """zeroshot: the model config's ``zeroshot`` block (templates, max_length, the name sources)."""
        self.configure_prompts(zeroshot, model_name)
        self._zeroshot_config = zeroshot

    def class_names(self) -> List[str]:
        if self._class_names is None:
            name, zeroshot = self._zeroshot_model_name, self._zeroshot_config
            names = resolve_class_names(zeroshot, registry.get("config", no_warning=True), registry, name)
            if config_flag(zeroshot.get("lowercase", True), f"model_config.{name}.zeroshot.lowercase"):
                names = [entry.lower() for entry in names]
            self._class_names = names
        return self._class_names

    def forward_zeroshot(self, sample_list):
        """{"scores": (B, C), "losses": {".../zeroshot_ce": CE against targets, when present}}."""
        return self.with_loss_keys(sample_list, self.run_zeroshot(sample_list))


@registry.register_model("align")
class ALIGN(PromptZeroShot, ALIGNMethods, FashionModelBase):
    """ALIGN dual encoder: EfficientNet-style image tower + BERT [CLS] text tower."""

    model_name = "align"
    options_class = AlignOptions

    def build(self):
        options = self.build_options()
        self.build_network(options)
        self.configure_zeroshot(options.zeroshot or {}, "align")

    def forward(self, sample_list):
        """sample_list keys: image (B, 3, H, W), input_ids / attention_mask (B, L) or,
        with released weights, text list[str] [contrastive]; image (+ targets (B,)
        for the loss) [zeroshot].

        Returns, contrastive: {"losses": {"<type>/<dataset>/itc": scalar},
        "image_embedding": (B, D), "text_embedding": (B, D)};
        zeroshot: {"losses": {".../zeroshot_ce": scalar} (when targets exist), "scores": (B, C)}.
        """
        return self.with_loss_keys(sample_list, self.run(sample_list))
