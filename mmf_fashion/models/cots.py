"""COTS (CVPR 2022) as the MMF model `cots`: a two-stream model with momentum queues.

Cheatsheet::

    mmf_run config=projects/vqvae/configs/train.yaml model=fashion_vqvae dataset=fashiongen  # CMVM's tokenizer
    mmf_run config=projects/cots/configs/pretrain.yaml model=cots dataset=fashiongen
    mmf_run config=projects/cots/configs/itr.yaml model=cots dataset=fashiongen

    model = registry.get_model_class("cots")(config); model.build()
    out = model(sample_list)   # train: {"losses": {"train/fashiongen/itc": ..., ".../kl": ...,
                               #          ".../cmlm": ..., ".../cmvm": ...}, ...}
    model.embed_images(images); model.embed_texts(["red dress"])   # (N, D) unit norm

What one training step does (the maths lives in mmf_fashion.modules.cots):
1. EMA update of the momentum towers (``momentum_encoders.*``):
   p_m = m * p_m + (1 - m) * p;
2. online and momentum embeddings of the batch (optionally the mean of the
   views ``image`` and ``image_2`` of each product, ``average_views``);
3. the adaptive momentum filter marks the pairs whose momentum positive
   similarity is below mu - k * sigma of recent positives (``filter``);
4. instance level ``itc``: online features against [momentum features of
   the global batch ; queue], both ways; task level ``kl``: symmetric KL
   between the i2t and t2i distributions over the same candidates;
5. token level ``cmlm`` (masked words from the text tokens, the image's
   global feature added to each: ``cmlm.fusion``) and ``cmvm`` (the frozen
   tokenizer's VQ codes of the masked patches from the masked image's patch
   features, the text's global feature added; the streams never attend to
   each other). CMVM's targets come from a trained tokenizer
   (``cmvm.tokenizer_checkpoint``, written by projects/vqvae; missing = an
   error; ``cmvm.tokenizer: random`` only by name). Image tower
   (``image_tower``): ``cnn`` (default; CMVM blanks the masked patches'
   pixels) or ``vit`` (the paper's: a ViT over patch tokens, the masked
   patches replaced by a learned mask token before the transformer);
6. every pair's momentum features (filtered or not) are gathered from all
   ranks and pushed into the queues; every similarity into the filter.
Filtered pairs leave all four losses. A loss weight of 0 skips that task.
With ``product_id`` in the batch (``mask_same_product``), keys of the same
product other than the pair itself (its older queue entries: a queue
longer than an epoch always holds them) are not used as negatives.

Input keys (sample list, B = batch): ``image`` (B, 3, H, W); ``input_ids``,
``attention_mask`` (B, L), optional ``token_type_ids``; optional
``product_id`` (B,) (see mask_same_product); optional
``image_2`` (B, 3, H, W); cmlm: ``masked_input_ids``, ``mlm_labels`` (B, L)
(made here by token-level masking when the dataset does not send them);
cmvm: ``patch_mask`` (B, N) bool (random cells at ``cmvm.mask_ratio``
when absent; resized to the VQ grid when N differs; with the ViT tower the
VQ grid is the patch grid). docs/models/cots.md describes the model and its
options for users.
Outputs: ``losses`` (only in training the queue-based ones; in eval an
in-batch ``itc``), ``image_embedding`` and ``text_embedding`` (B, D).

State that survives a resume (all parameters or registered buffers):
``momentum_encoders.*``, ``queue.{image,text,ids,pointer,count}``,
``momentum_filter.history.{similarity,pointer,count}``. Weights of the
online towers loaded without their ``momentum_encoders.*`` (e.g. from an
ALIGN checkpoint) also become the momentum towers (``load_state_dict``).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel
from torch import nn

from mmf_fashion.modules import cots as cots_ops
from mmf_fashion.modules.losses import LogitScale, contrastive_loss
from mmf_fashion.modules.two_stream import (
    TOWER_NAMES,
    TwoStreamMixin,
    average_view_embeddings,
    config_flag,
    frozen_copy,
    image_features,
    l2_normalize,
    text_features,
)

TASKS = ("itc", "kl", "cmlm", "cmvm")


def loss_key(sample_list, name: str) -> str:
    dataset_type = getattr(sample_list, "dataset_type", None) or sample_list.get("dataset_type", "train")
    dataset_name = getattr(sample_list, "dataset_name", None) or sample_list.get("dataset_name", "fashiongen")
    return f"{dataset_type}/{dataset_name}/{name}"


TOKENIZER_SOURCES = ("checkpoint", "random")
HOW_TO_GET_A_TOKENIZER = (
    "train one first: `mmf_run config=projects/vqvae/configs/train.yaml model=fashion_vqvae dataset=fashiongen` "
    "writes ./save/vqvae/fashion_vqvae_final.pth (the tokenizer FashionViL's pretraining reads as "
    "model_config.fashionvil.tokenizer_checkpoint: the same file serves both), then set "
    "model_config.cots.cmvm.tokenizer_checkpoint to it, with cmvm.tokenizer_config repeating the sizes it was "
    "trained with (projects/cots/configs/pretrain.yaml does both). Without CMVM: "
    "model_config.cots.loss_weights.cmvm=0. For tests and ablations only, model_config.cots.cmvm.tokenizer=random "
    "uses a random frozen VQ-VAE (weak, meaningless targets)"
)


def build_image_tokenizer(config) -> nn.Module:
    """The frozen VQ tokenizer whose codes CMVM predicts (``config`` = model_config.cots.cmvm).

    ``tokenizer: checkpoint`` (default): the trained VQ-VAE at
    ``tokenizer_checkpoint``; none set, or no such file, is an error that says
    how to get one. ``tokenizer: random``: a randomly initialised frozen
    VQ-VAE (seeded, the same on every rank), only when asked for by name.
    """
    from mmf_fashion.modules.vqvae import VQVAE, VQTokenizer, load_frozen_tokenizer, vqvae_options

    tokenizer_config = config.get("tokenizer_config", None) or {}
    source = str(config.get("tokenizer", "checkpoint") or "checkpoint").strip().lower()
    if source not in TOKENIZER_SOURCES:
        raise ValueError(f"model_config.cots.cmvm.tokenizer must be one of {TOKENIZER_SOURCES}, got {source!r}")
    if source == "checkpoint":
        path = config.get("tokenizer_checkpoint", None)
        if not path:
            raise ValueError(
                "CMVM (model_config.cots.loss_weights.cmvm > 0) predicts the codes of a trained image tokenizer, "
                f"but model_config.cots.cmvm.tokenizer_checkpoint is not set: {HOW_TO_GET_A_TOKENIZER}."
            )
        if not os.path.isfile(str(path)):
            raise FileNotFoundError(
                f"model_config.cots.cmvm.tokenizer_checkpoint={path}: no such file; {HOW_TO_GET_A_TOKENIZER}."
            )
        return load_frozen_tokenizer(str(path), tokenizer_config)
    seed_state = torch.random.get_rng_state()
    torch.manual_seed(int(config.get("random_tokenizer_seed", 0)))  # the same random tokenizer on every rank
    try:
        tokenizer = VQTokenizer(VQVAE(**vqvae_options(tokenizer_config)))
    finally:
        torch.random.set_rng_state(seed_state)
    return tokenizer


IMAGE_TOWERS = ("cnn", "vit")


@registry.register_model("cots")
class COTS(TwoStreamMixin, BaseModel):
    """COTS: two towers, momentum towers, two queues, CMLM/CMVM, task KL and the AMF filter."""

    def __init__(self, config):
        super().__init__(config)

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "configs", "cots.yaml")

    def build(self):
        config = self.config
        self.build_towers(
            image_encoder=config.get("image_encoder", "efficientnet_b0"),
            image_pretrained=config.get("image_pretrained", None),
            text_encoder=config.get("text_encoder", None),
            embed_dim=int(config.get("embed_dim", 256)),
            text_pooling=str(config.get("text_pooling", "cls")),
        )
        weights = config.get("loss_weights", None) or {}
        unknown = sorted(set(weights) - set(TASKS))
        if unknown:
            raise ValueError(f"model_config.cots.loss_weights: unknown tasks {unknown}; known: {TASKS}")
        self.loss_weights = {task: float(weights.get(task, 1.0)) for task in TASKS}
        self.image_tower = str(config.get("image_tower", "cnn") or "cnn").strip().lower()
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"model_config.cots.image_tower must be one of {IMAGE_TOWERS}, got {self.image_tower!r}")
        if self.image_tower == "vit":
            # replaces the CNN tower built above; the mask token only exists where CMVM uses it
            vit = dict(config.get("vit", None) or {})
            self.image_encoder = cots_ops.MaskedPatchViT(**vit, use_mask_token=self.loss_weights["cmvm"] > 0)
            self.image_projection = nn.Linear(self.image_encoder.out_channels, self.embed_dim)
        self.momentum_encoders = nn.ModuleDict({name: frozen_copy(getattr(self, name)) for name in TOWER_NAMES})
        self.momentum = float(config.get("momentum", 0.995))
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"model_config.cots.momentum must be in [0, 1], got {self.momentum}")
        self.logit_scale = LogitScale(
            init=1.0 / float(config.get("temperature", 0.07)),
            learnable=config_flag(config.get("learnable_temperature", True), "model_config.cots.learnable_temperature"),
            max_value=float(config.get("max_scale", 100.0)),
        )
        queue_size = int(config.get("queue_size", 4096))
        self.mask_same_product = config_flag(config.get("mask_same_product", True), "model_config.cots.mask_same_product")
        queue_fields = {"image": self.embed_dim, "text": self.embed_dim, "ids": (1, torch.long)}
        self.queue = cots_ops.FifoQueue(queue_size, queue_fields) if queue_size > 0 else None
        filter_config = config.get("filter", None) or {}
        self.filter_start_update = int(filter_config.get("start_update", 0))
        self.momentum_filter = (
            cots_ops.MomentumFilter(
                size=int(filter_config.get("size", 2048)),
                k=float(filter_config.get("k", 1.5)),
                min_count=int(filter_config.get("min_count", 256)),
            )
            if config_flag(filter_config.get("enabled", True), "model_config.cots.filter.enabled")
            else None
        )
        self.average_views = config_flag(config.get("average_views", False), "model_config.cots.average_views")
        self.max_text_length = int(config.get("max_text_length", 40))

        cmlm = config.get("cmlm", None) or {}
        self.mlm_probability = float(cmlm.get("probability", 0.15))
        if self.loss_weights["cmlm"] > 0:
            self.cmlm_head = cots_ops.CrossModalTokenHead(
                self.text_hidden_size, self.embed_dim, int(self.text_encoder.config.vocab_size),
                fusion=str(cmlm.get("fusion", "add")),
            )
        cmvm = config.get("cmvm", None) or {}
        self.patch_mask_ratio = float(cmvm.get("mask_ratio", 0.4))
        if self.loss_weights["cmvm"] > 0:
            self.image_tokenizer = build_image_tokenizer(cmvm)
            if self.image_tower == "vit":
                self._check_vit_matches_tokenizer()
            self.cmvm_head = cots_ops.CrossModalTokenHead(
                self.image_channels, self.embed_dim, int(self.image_tokenizer.codebook_size),
                hidden_size=int(cmvm.get("hidden_size", 256)), fusion=str(cmvm.get("fusion", "add")),
            )

    def _check_vit_matches_tokenizer(self) -> None:
        """CMVM with the ViT predicts one code per patch: the VQ grid must be the patch grid."""
        size = self.image_encoder.image_size
        code_hw = tuple(self.image_tokenizer.grid_shape(size, size))
        if code_hw != tuple(self.image_encoder.grid_size):
            raise ValueError(
                f"model_config.cots.vit: a {size} px image gives {self.image_encoder.grid_size} patches of "
                f"{self.image_encoder.patch_size} px but {code_hw} VQ codes: set vit.patch_size to the tokenizer's "
                "downsample (model_config.cots.cmvm.tokenizer_config.downsample)"
            )

    # ----------------------------------------------------------- features
    def _tower_features(self, encoder, projection, images, patch_mask=None) -> Dict[str, torch.Tensor]:
        """The image features of a tower (online or momentum). CNN: the pooled grid;
        ViT: [CLS] is the global feature, the patch tokens the grid (masked with
        the mask token where ``patch_mask`` is True)."""
        if self.image_tower != "vit":
            return image_features(encoder, projection, images)
        hidden = encoder(images, patch_mask)
        cls = hidden[:, 0]
        return {"grid": hidden[:, 1:], "grid_size": encoder.grid_size, "pooled": cls,
                "embedding": l2_normalize(projection(cls))}

    def image_features(self, images: torch.Tensor, patch_mask=None) -> Dict[str, torch.Tensor]:
        return self._tower_features(self.image_encoder, self.image_projection, images, patch_mask)

    def _online_image(self, sample_list) -> Dict[str, torch.Tensor]:
        features = self.image_features(sample_list["image"])
        if self.average_views and sample_list.get("image_2", None) is not None:
            second = self.encode_image(sample_list["image_2"])
            features["embedding"] = average_view_embeddings(torch.stack([features["embedding"], second], 1))
        return features

    @torch.no_grad()
    def _momentum_embeddings(self, sample_list):
        encoders = self.momentum_encoders
        image = self._tower_features(
            encoders["image_encoder"], encoders["image_projection"], sample_list["image"]
        )["embedding"]
        if self.average_views and sample_list.get("image_2", None) is not None:
            second = self._tower_features(encoders["image_encoder"], encoders["image_projection"], sample_list["image_2"])
            image = average_view_embeddings(torch.stack([image, second["embedding"]], 1))
        text = text_features(
            encoders["text_encoder"], encoders["text_projection"], sample_list["input_ids"],
            sample_list["attention_mask"], sample_list.get("token_type_ids", None), pooling=self.text_pooling,
        )["embedding"]
        return image, text

    @torch.no_grad()
    def momentum_update(self) -> None:
        cots_ops.ema_update(
            [getattr(self, name) for name in TOWER_NAMES],
            [self.momentum_encoders[name] for name in TOWER_NAMES],
            self.momentum,
        )

    def load_state_dict(self, state_dict, *args, **kwargs):
        """BaseModel's load, then: a tower whose weights came without its momentum
        copy (an ALIGN or other two-tower checkpoint, pretrained_state_mapping of the
        online towers only) gets the momentum copy reset to it, as ``build`` does;
        otherwise the momentum keys would stay those of a randomly initialised tower."""
        result = super().load_state_dict(state_dict, *args, **kwargs)
        keys = list(state_dict.keys())
        for name in TOWER_NAMES:
            online_loaded = any(key.startswith(f"{name}.") for key in keys)
            momentum_loaded = any(key.startswith(f"momentum_encoders.{name}.") for key in keys)
            if online_loaded and not momentum_loaded:
                cots_ops.ema_update([getattr(self, name)], [self.momentum_encoders[name]], 0.0)
        return result

    # ------------------------------------------------------------ forward
    def forward(self, sample_list) -> Dict:
        """See the module docstring for the keys; returns {"losses", "image_embedding", "text_embedding"}."""
        if not self.training:
            return self._forward_eval(sample_list)
        self.momentum_update()
        image = self._online_image(sample_list)
        text = self.text_features(
            sample_list["input_ids"], sample_list["attention_mask"], sample_list.get("token_type_ids", None)
        )
        image_momentum, text_momentum = self._momentum_embeddings(sample_list)
        positive_similarity = (image_momentum * text_momentum).sum(-1)
        keep = self._keep_mask(positive_similarity)

        product_ids = sample_list.get("product_id", None)
        losses = {}
        if self.loss_weights["itc"] > 0 or self.loss_weights["kl"] > 0:
            instance = cots_ops.momentum_contrastive_losses(
                image["embedding"], text["embedding"], image_momentum, text_momentum,
                self.logit_scale(), queue=self.queue, keep=keep,
                ids=product_ids if self.mask_same_product else None,
            )
            for task in ("itc", "kl"):
                if self.loss_weights[task] > 0:
                    losses[task] = self.loss_weights[task] * instance[task]
        if self.loss_weights["cmlm"] > 0:
            losses["cmlm"] = self.loss_weights["cmlm"] * self._cmlm_loss(sample_list, image["embedding"], keep)
        if self.loss_weights["cmvm"] > 0:
            losses["cmvm"] = self.loss_weights["cmvm"] * self._cmvm_loss(sample_list, text["embedding"], keep)

        # every pair enters the queues and the filter's history, kept or not
        if self.queue is not None:
            # -1: a batch without product ids; real ids are >= 0, so it never matches
            ids = product_ids if product_ids is not None else torch.full_like(positive_similarity, -1, dtype=torch.long)
            self.queue.enqueue(image=image_momentum, text=text_momentum, ids=ids.reshape(-1, 1).long())
        if self.momentum_filter is not None:
            self.momentum_filter.update(positive_similarity)
        output = {
            "losses": {loss_key(sample_list, name): value for name, value in losses.items()},
            "image_embedding": image["embedding"],
            "text_embedding": text["embedding"],
        }
        if keep is not None:
            output["kept_fraction"] = keep.float().mean().detach()
        return output

    def _keep_mask(self, positive_similarity: torch.Tensor) -> Optional[torch.Tensor]:
        if self.momentum_filter is None:
            return None
        update = int(registry.get("num_updates", no_warning=True) or 0)
        if update < self.filter_start_update:
            return torch.ones_like(positive_similarity, dtype=torch.bool)
        return self.momentum_filter.keep_mask(positive_similarity)

    def _forward_eval(self, sample_list) -> Dict:
        image_embedding = self._online_image(sample_list)["embedding"]
        text_embedding = self.encode_text(
            sample_list["input_ids"], sample_list["attention_mask"], sample_list.get("token_type_ids", None)
        )
        # in-batch loss only: evaluation must not touch the queues or the momentum towers
        loss = contrastive_loss(image_embedding, text_embedding, self.logit_scale(), gather=False)
        return {
            "losses": {loss_key(sample_list, "itc"): loss},
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
        }

    def _mlm_inputs(self, sample_list):
        masked = sample_list.get("masked_input_ids", None)
        labels = sample_list.get("mlm_labels", None)
        if masked is not None and labels is not None:
            return masked, labels
        tokenizer = self.tokenizer()
        return cots_ops.mask_tokens(
            sample_list["input_ids"], sample_list["attention_mask"], tokenizer.mask_token_id,
            int(self.text_encoder.config.vocab_size), tokenizer.all_special_ids, self.mlm_probability,
        )

    def _cmlm_loss(self, sample_list, image_global: torch.Tensor, keep) -> torch.Tensor:
        masked_ids, labels = self._mlm_inputs(sample_list)
        hidden = self.text_encoder(
            input_ids=masked_ids, attention_mask=sample_list["attention_mask"],
            token_type_ids=sample_list.get("token_type_ids", None),
        ).last_hidden_state
        return cots_ops.masked_token_loss(self.cmlm_head, hidden, image_global, labels.long(), keep)

    def _cmvm_loss(self, sample_list, text_global: torch.Tensor, keep) -> torch.Tensor:
        images = sample_list["image"]
        codes = self.image_tokenizer.encode_codes(images)  # (B, h*w)
        code_hw = self.image_tokenizer.grid_shape(*images.shape[-2:])
        patch_mask = sample_list.get("patch_mask", None)
        if patch_mask is None:
            patch_mask = cots_ops.random_patch_mask(
                images.shape[0], code_hw[0] * code_hw[1], self.patch_mask_ratio, device=images.device
            )
        else:
            source = _square_grid(patch_mask.shape[1])
            patch_mask = cots_ops.resize_patch_mask(patch_mask.bool(), source, code_hw)
        if self.image_tower == "vit":
            # token masking: the masked patches enter the transformer as the mask token
            grid = self.image_features(images, patch_mask)["grid"]
        else:
            masked_images = cots_ops.mask_image_patches(images, patch_mask, code_hw)
            features = self.image_features(masked_images)
            grid = cots_ops.resize_grid_tokens(features["grid"], features["grid_size"], code_hw)
        labels = codes.masked_fill(~patch_mask, cots_ops.IGNORE_INDEX)
        return cots_ops.masked_token_loss(self.cmvm_head, grid, text_global, labels, keep)


def _square_grid(cells: int):
    side = int(round(cells ** 0.5))
    if side * side != cells:
        raise ValueError(f"patch_mask has {cells} cells: expected a square grid (e.g. 49 = 7x7)")
    return side, side
