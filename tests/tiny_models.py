"""Tiny configs and batch makers of every registered model family, for tests.

Cheatsheet::

    from tiny_models import MODEL_CASES, build_model
    for case in MODEL_CASES["xvlm"]:                    # one TinyCase per head walked
        model = build_model(registry, "xvlm", case.config(tmp_path))
        output = model(case.batch())

    from tiny_models import fashionvil_config, fashionvil_batch   # a family's own helpers

tests/test_registry.py walks MMF's registry and runs every case of
MODEL_CASES: a registered model without an entry there fails. To add a model,
write its tiny config (a function of pytest's tmp_path, so a model that needs
files, such as a tokenizer checkpoint or a local pretrained directory, can
write them there) and a batch maker with the docs/ARCHITECTURE.md keys its
head reads, then add a TinyCase per head whose parameters or outputs differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import torch
from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# model output keys of docs/ARCHITECTURE.md ("Model output keys"), by task
RETRIEVAL = ("image_embedding", "text_embedding")
COMPOSED = ("query_embedding", "target_embedding")  # TGIR and OCIR
CLASSIFICATION = ("scores",)
LOSSES = ("losses",)
# X-VLM grounding: what the grounding_accuracy metric compares with the batch's boxes
GROUNDING = ("predicted_boxes",)


def default_config(name: str):
    """model_config.<name> of the model's packaged YAML (mmf_fashion/models/configs/<name>.yaml)."""
    path = os.path.join(ROOT, "mmf_fashion", "models", "configs", f"{name}.yaml")
    return OmegaConf.load(path).model_config[name]


def build_model(registry, name: str, config, seed: int = 0):
    """What MMF's build_model does, from a model config: construct, build, init_losses."""
    torch.manual_seed(seed)
    model = registry.get_model_class(name)(config)
    model.build()
    model.init_losses()
    return model


def _sample_list(fields: Dict[str, Any], dataset_type: str = "train"):
    from mmf.common.sample import SampleList

    batch = SampleList()
    for key, value in fields.items():
        batch.add_field(key, value)
    batch.dataset_type = dataset_type
    batch.dataset_name = "fashiongen"
    return batch


# ------------------------------------------------------------------ fashionvil
FASHIONVIL_BATCH, FASHIONVIL_LENGTH, FASHIONVIL_IMAGE, FASHIONVIL_GRID, FASHIONVIL_ATTRIBUTES = 4, 10, 64, 4, 6
FASHIONVIL_CONTRASTIVE_DIM = 16
FASHIONVIL_TOKENIZER = {
    "codebook_size": 16,
    "codebook_dim": 8,
    "hidden_channels": 8,
    "max_channels": 16,
    "downsample": 32,
}


def fashionvil_config(head, **extra):
    config = default_config("fashionvil")
    config.head = head
    config.image_encoder = {"name": "resnet18", "pretrained": None}
    config.text_encoder = {
        "name": "tiny",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    config.contrastive_dim = FASHIONVIL_CONTRASTIVE_DIM  # below the hidden size, as 256 < 768
    config.pac = {"num_attributes": FASHIONVIL_ATTRIBUTES, "scale": 10.0}
    config.classification = {"num_classes": 5, "dropout": 0.1, "target": "subcategory"}
    config.ocir = {"num_categories": 4, "num_subspaces": 3, "category_dim": 8, "negatives": "same_category"}
    return OmegaConf.merge(config, OmegaConf.create(extra))


def build_fashionvil(registry, config):
    return build_model(registry, "fashionvil", config)


def write_fashionvil_tokenizer(path) -> str:
    """A random tiny VQ-VAE saved as the fashion_vqvae model writes it (MPFC's frozen tokenizer)."""
    from mmf_fashion.modules.vqvae import VQVAE

    torch.manual_seed(0)
    vqvae = VQVAE(**FASHIONVIL_TOKENIZER)
    torch.save({"vqvae." + key: value for key, value in vqvae.state_dict().items()}, path)
    return str(path)


def fashionvil_pretraining_config(tmp_path: Path):
    tokenizer = write_fashionvil_tokenizer(Path(tmp_path) / "fashion_vqvae_final.pth")
    return fashionvil_config("pretraining", tokenizer_checkpoint=tokenizer, tokenizer_config=FASHIONVIL_TOKENIZER)


def fashionvil_update_running(model, task) -> int:
    """An update number for which the task sampler draws `task`."""
    return next(u for u in range(10_000) if model.task_sampler.task_for_update(u) == task)


def fashionvil_task_updates(model) -> Sequence[int]:
    """One update per pretraining task: pretraining runs one task per update, so all of them
    together reach every head."""
    return [fashionvil_update_running(model, task) for task in model.task_sampler.tasks]


def fashionvil_batch(**fields):
    generator = torch.Generator().manual_seed(1)
    batch, length, image = FASHIONVIL_BATCH, FASHIONVIL_LENGTH, FASHIONVIL_IMAGE
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, 6:] = 0
    base = {
        "image": torch.randn(batch, 3, image, image, generator=generator),
        "input_ids": torch.randint(1000, 3000, (batch, length), generator=generator),
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "product_id": torch.arange(batch),
    }
    base.update(fields)
    return _sample_list(base)


def fashionvil_pretraining_batch():
    generator = torch.Generator().manual_seed(2)
    batch, length, image = FASHIONVIL_BATCH, FASHIONVIL_LENGTH, FASHIONVIL_IMAGE
    labels = torch.full((batch, length), -100)
    masked = torch.randint(1000, 3000, (batch, length), generator=generator)
    labels[:, 2] = masked[:, 2]
    labels[1, 4] = masked[1, 4]
    masked[:, 2] = 103  # [MASK]
    patch_mask = torch.zeros(batch, FASHIONVIL_GRID, dtype=torch.bool)
    patch_mask[:, 0] = True
    patch_mask[1::2, 3] = True
    attributes = torch.zeros(batch, FASHIONVIL_ATTRIBUTES)
    attributes[0, [0, 2]] = 0.5
    attributes[1, 1] = 1.0
    attributes[2, [3, 4, 5]] = 1 / 3
    # row 3 has no attribute: all zero, ignored by the soft cross entropy
    return fashionvil_batch(
        input_ids=masked.clone(),
        masked_input_ids=masked,
        mlm_labels=labels,
        image_2=torch.randn(batch, 3, image, image, generator=generator),
        patch_mask=patch_mask,
        attribute_targets=attributes,
    )


def fashionvil_composition_batch():
    generator = torch.Generator().manual_seed(4)
    shape = (FASHIONVIL_BATCH, 3, FASHIONVIL_IMAGE, FASHIONVIL_IMAGE)
    return fashionvil_batch(
        reference_image=torch.randn(shape, generator=generator), target_image=torch.randn(shape, generator=generator)
    )


def fashionvil_classification_batch():
    # as the fashiongen builder: targets = subcategory_id, beside category_id
    subcategory = torch.tensor([0, 4, 2, 1])
    return fashionvil_batch(
        targets=subcategory, subcategory_id=subcategory.clone(), category_id=torch.tensor([1, 3, 0, 1])
    )


def outfit_fields(side: int, seed: int, outfit_categories, blank_category) -> Dict[str, torch.Tensor]:
    """OCIR inputs of 4 outfits of up to 3 items (3, 2, 1 and 3 present) and their blanks."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    return {
        "outfit_images": torch.randn(4, 3, 3, side, side, generator=generator),
        "outfit_mask": mask,
        "outfit_categories": torch.tensor(outfit_categories),
        "blank_image": torch.randn(4, 3, side, side, generator=generator),
        "blank_category": torch.tensor(blank_category),
    }


def fashionvil_ocir_batch():
    fields = outfit_fields(FASHIONVIL_IMAGE, 3, [[0, 1, 2], [1, 2, 0], [3, 0, 0], [0, 2, 3]], [3, 0, 1, 1])
    return fashionvil_batch(**fields, blank_id=torch.arange(FASHIONVIL_BATCH))


# ------------------------------------------------------------------------ cots
COTS_TOKENIZER = {"codebook_size": 16, "codebook_dim": 8, "hidden_channels": 8, "max_channels": 16, "downsample": 32}
COTS_TINY = {
    "image_encoder": "mobilenet_v3_small",
    "text_encoder": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "dropout": 0.0,
    },
    "embed_dim": 16,
    "queue_size": 8,
    "filter": {"size": 16, "min_count": 4},
    "cmvm": {"hidden_size": 16, "tokenizer_config": COTS_TOKENIZER},
}
# the paper's image tower at tiny size: 64 px in 16 px patches (4x4), one VQ code per patch
COTS_VIT = {
    "image_tower": "vit",
    "vit": {
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "dropout": 0.0,
    },
    "cmvm": {"tokenizer_config": {"downsample": 16}},
}


def write_cots_tokenizer(path, sizes) -> str:
    """A tiny VQ-VAE saved as the fashion_vqvae model writes it: CMVM's frozen tokenizer."""
    from mmf_fashion.modules.vqvae import VQVAE, vqvae_options

    torch.manual_seed(0)
    vqvae = VQVAE(**vqvae_options(sizes))
    torch.save({"vqvae." + key: value for key, value in vqvae.state_dict().items()}, path)
    return str(path)


def cots_config(tmp_path=None, **overrides):
    """The tiny COTS config; with CMVM on, a tokenizer checkpoint of the configured
    sizes is written under tmp_path (as projects/vqvae would) and pointed at."""
    config = OmegaConf.merge(default_config("cots"), COTS_TINY, overrides)
    cmvm = config.cmvm
    if float(config.loss_weights.cmvm) > 0 and cmvm.tokenizer == "checkpoint" and not cmvm.tokenizer_checkpoint:
        if tmp_path is None:
            raise ValueError("cots_config: CMVM needs a tokenizer; pass tmp_path to write one")
        sizes = OmegaConf.to_container(cmvm.tokenizer_config)
        name = "cots_vqvae_ds{}.pth".format(sizes.get("downsample"))
        cmvm.tokenizer_checkpoint = write_cots_tokenizer(Path(tmp_path) / name, sizes)
    return config


def build_cots(registry, tmp_path=None, **overrides):
    model = build_model(registry, "cots", cots_config(tmp_path, **overrides))
    model.train()
    return model


def cots_batch(batch=4, length=10, seed=0, mlm=False, patch_mask=False):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 5000, (batch, length), generator=generator)
    input_ids[:, 0] = 101
    fields = {
        "image": torch.randn(batch, 3, 64, 64, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }
    if mlm:
        labels = torch.full((batch, length), -100, dtype=torch.long)
        labels[:, 2] = input_ids[:, 2]
        masked = input_ids.clone()
        masked[:, 2] = 103
        fields.update(masked_input_ids=masked, mlm_labels=labels)
    if patch_mask:
        mask = torch.zeros(batch, 49, dtype=torch.bool)
        mask[:, :20] = True
        fields["patch_mask"] = mask
    return _sample_list(fields)


def cots_all_tasks_batch():
    batch = cots_batch(mlm=True, patch_mask=True)
    batch.add_field("product_id", torch.tensor([1, 2, 3, 1]))  # two views of product 1
    return batch


def cots_vit_batch():
    """All tasks with a patch_mask on the ViT's 4x4 patch grid (= the tokenizer's grid)."""
    batch = cots_batch(mlm=True)
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, [0, 5, 10, 15]] = True
    mask[1, 3] = True
    batch.add_field("patch_mask", mask)
    batch.add_field("product_id", torch.tensor([1, 2, 3, 1]))
    return batch


# ------------------------------------------------------------------------ xvlm
XVLM_TINY = {
    "image_encoder": {
        "type": "vit",
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    # one BERT split in half: 1 text layer + 1 fusion layer
    "text_encoder": {
        "name": "tiny",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "embed_dim": 16,
    "tokenizer": "tiny",
    "max_text_length": 16,
}
XVLM_B, XVLM_L, XVLM_R, XVLM_LB = 4, 10, 3, 6


def xvlm_config(**overrides):
    return OmegaConf.merge(default_config("xvlm"), OmegaConf.create({**XVLM_TINY, **overrides}))


def build_xvlm(registry, **overrides):
    return build_model(registry, "xvlm", xvlm_config(**overrides))


def xvlm_batch(dataset_type="train"):
    from mmf.common.sample import SampleList

    B, L, R, LB = XVLM_B, XVLM_L, XVLM_R, XVLM_LB
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (B, L))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 7:] = 0
    phrases = torch.randint(1000, 2000, (B, R, LB))
    phrases[..., 0], phrases[..., -1] = 101, 102
    return SampleList(
        {
            "image": torch.randn(B, 3, 32, 32),
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(ids),
            "product_id": torch.tensor([10, 10, 11, 12]),
            "image_id": torch.arange(B) + 100,
            "boxes": torch.rand(B, R, 4) * 0.4 + 0.3,
            "box_valid": torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool),
            "box_input_ids": phrases,
            "box_attention_mask": torch.ones(B, R, LB, dtype=torch.long),
            "dataset_type": dataset_type,
            "dataset_name": "fashiongen",
        }
    )


# parameters a head builds (so pretrained weights load strictly) but does not train
XVLM_UNUSED = {
    "pretraining": (),
    "retrieval": ("box_head", "mlm_head"),
    "grounding": ("itm_head", "mlm_head", "image_projection", "text_projection", "itc_scale"),
}


# ----------------------------------------------------------------- fashionbert
FASHIONBERT_TINY_TEXT = {
    "name": "tiny",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
FASHIONBERT_TINY = {
    "image_encoder": {"name": "resnet18"},
    "grid_size": 2,
    "patch_size": 16,
    "num_labels": 5,
    "text_encoder": FASHIONBERT_TINY_TEXT,
}
FASHIONBERT_B, FASHIONBERT_L = 6, 12


def fashionbert_config(**overrides):
    return OmegaConf.merge(default_config("fashionbert"), FASHIONBERT_TINY, overrides)


def build_fashionbert(registry, **overrides):
    return build_model(registry, "fashionbert", fashionbert_config(**overrides))


def fashionbert_batch(with_query=False):
    from mmf.common.sample import SampleList

    B, L = FASHIONBERT_B, FASHIONBERT_L
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (B, L))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 8:] = 0
    labels = torch.full((B, L), -100)
    labels[:, 3] = ids[:, 3]
    masked = ids.clone()
    masked[:, 3] = 103
    batch = {
        "image": torch.randn(B, 3, 32, 32),
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "masked_input_ids": masked,
        "mlm_labels": labels,
        "product_id": torch.arange(B) + 10,
        "image_id": torch.arange(B) + 100,
        "subcategory_id": torch.tensor([0, 0, 1, 1, 2, 2]),
        "targets": torch.tensor([0, 1, 2, 3, 4, 0]),
        "dataset_type": "train",
        "dataset_name": "fashiongen",
    }
    if with_query:
        batch["query_input_ids"] = ids[:, :6].clone()
        batch["query_attention_mask"] = torch.ones(B, 6, dtype=torch.long)
    return SampleList(batch)


# ----------------------------------------------------------------------- align
ALIGN_TINY = {
    "image_encoder": "mobilenet_v3_small",
    "text_encoder": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "dropout": 0.0,
    },
    "embed_dim": 16,
}
ALIGN_CLASSES = ["maxi dress", "sneakers", "tote bag", "denim jacket"]


def align_config(**overrides):
    return OmegaConf.merge(default_config("align"), ALIGN_TINY, overrides)


def align_batch(batch=4, length=10, seed=0, **extra):
    generator = torch.Generator().manual_seed(seed)
    fields = {
        "image": torch.randn(batch, 3, 64, 64, generator=generator),
        "input_ids": torch.randint(1000, 5000, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }
    fields.update(extra)
    return _sample_list(fields)


# --------------------------------------------------------------- fashion_vqvae
VQVAE_TINY = {"codebook_size": 16, "codebook_dim": 8, "hidden_channels": 8, "max_channels": 16, "downsample": 16}


def vqvae_config(**overrides):
    return OmegaConf.merge(default_config("fashion_vqvae"), VQVAE_TINY, overrides)


def vqvae_images(batch=4, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def vqvae_batch():
    return _sample_list({"image": vqvae_images()})


# ------------------------------------------------------------ the registry walk
def _one_update(model) -> Sequence[int]:
    return (0,)


# ------------------------------------------------------------------ clip
def clip_config(tmp_path, head="contrastive"):
    """clip from a tiny random CLIPModel saved in tmp_path (the released-weights path)."""
    from test_model_clip import save_tiny_clip

    directory = tmp_path / "tiny_clip"
    if not (directory / "config.json").exists():
        save_tiny_clip(directory)
    config = default_config("clip")
    config.pretrained = str(directory)
    config.head = head
    config.zeroshot.class_names = ["maxi dress", "sneakers", "tote bag", "denim jacket"]
    config.ocir = {"num_categories": 4, "num_subspaces": 3, "category_dim": 8}
    return config


def clip_batch(**extra):
    from test_model_clip import make_batch

    return make_batch(**extra)


def clip_composition_batch():
    g = torch.Generator().manual_seed(7)
    return clip_batch(
        reference_image=torch.randn(4, 3, 32, 32, generator=g), target_image=torch.randn(4, 3, 32, 32, generator=g)
    )


def clip_ocir_batch():
    from test_model_clip import _outfit_batch

    return _outfit_batch()


@dataclass(frozen=True)
class TinyCase:
    """One head of a registered model at tiny size.

    config(tmp_path) -> the model config; batch() -> a fresh training SampleList
    (the same every call); eval_keys: what the eval-mode output must hold
    (docs/ARCHITECTURE.md); no_gradient: parameter-name prefixes the head builds
    but legitimately leaves out of its loss (checked to get no gradient);
    train_updates(model): the update numbers to train at (num_updates in MMF's
    registry), for models that pick their task by update.
    """

    head: str
    config: Callable[[Path], Any]
    batch: Callable[[], Any]
    eval_keys: Tuple[str, ...]
    no_gradient: Tuple[str, ...] = ()
    train_updates: Callable[[Any], Sequence[int]] = _one_update


MODEL_CASES: Dict[str, Tuple[TinyCase, ...]] = {
    "fashionvil": (
        TinyCase(
            "pretraining",
            fashionvil_pretraining_config,
            fashionvil_pretraining_batch,
            RETRIEVAL,
            train_updates=fashionvil_task_updates,
        ),
        # late fusion: the single-stream parts (visual token embeddings, BERT pooler) sit idle
        TinyCase(
            "contrastive",
            lambda tmp: fashionvil_config("contrastive"),
            fashionvil_batch,
            RETRIEVAL,
            no_gradient=("visual_embeddings.", "text_encoder.pooler."),
        ),
        TinyCase(
            "composition",
            lambda tmp: fashionvil_config("composition"),
            fashionvil_composition_batch,
            COMPOSED,
            no_gradient=("text_encoder.pooler.",),
        ),
        # cross entropy on the fused [CLS]: no contrastive temperature
        TinyCase(
            "classification",
            lambda tmp: fashionvil_config("classification"),
            fashionvil_classification_batch,
            CLASSIFICATION,
            no_gradient=("logit_scale.",),
        ),
        # image-only outfits: the text tower is never run
        TinyCase(
            "ocir",
            lambda tmp: fashionvil_config("ocir"),
            fashionvil_ocir_batch,
            COMPOSED,
            no_gradient=("text_encoder.", "visual_embeddings."),
        ),
    ),
    "cots": (
        TinyCase("all_tasks", cots_config, cots_all_tasks_batch, RETRIEVAL),
        TinyCase("vit_all_tasks", lambda tmp: cots_config(tmp, **COTS_VIT), cots_vit_batch, RETRIEVAL),
    ),
    "xvlm": tuple(
        TinyCase(
            head,
            lambda tmp, head=head: xvlm_config(head=head),
            xvlm_batch,
            GROUNDING if head == "grounding" else RETRIEVAL,
            no_gradient=XVLM_UNUSED[head],
        )
        for head in ("pretraining", "retrieval", "grounding")
    ),
    "fashionbert": tuple(
        TinyCase(head, lambda tmp, head=head: fashionbert_config(head=head), fashionbert_batch, CLASSIFICATION)
        for head in ("pretraining", "alignment", "classification")
    ),
    "align": (
        TinyCase("contrastive", lambda tmp: align_config(), align_batch, RETRIEVAL),
        TinyCase(
            "zeroshot",
            lambda tmp: align_config(head="zeroshot", zeroshot={"class_names": ALIGN_CLASSES}),
            lambda: align_batch(targets=torch.tensor([0, 1, 2, 3])),
            CLASSIFICATION,
        ),
    ),
    "fashion_vqvae": (TinyCase("tokenizer", lambda tmp: vqvae_config(), vqvae_batch, LOSSES),),
    "clip": (
        TinyCase("contrastive", lambda tmp: clip_config(tmp), clip_batch, RETRIEVAL),
        TinyCase(
            "zeroshot",
            lambda tmp: clip_config(tmp, "zeroshot"),
            lambda: clip_batch(targets=torch.tensor([0, 1, 2, 3])),
            CLASSIFICATION,
        ),
        TinyCase("composition", lambda tmp: clip_config(tmp, "composition"), clip_composition_batch, COMPOSED),
        TinyCase("ocir", lambda tmp: clip_config(tmp, "ocir"), clip_ocir_batch, COMPOSED),
    ),
}
