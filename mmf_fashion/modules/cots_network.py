"""COTS (CVPR 2022) as a plain torch network: towers, momentum towers, queues, filter, the four losses.

Cheatsheet::

    from mmf_fashion.modules.cots_network import COTSNetwork, CotsOptions
    net = COTSNetwork(options)          # options: CotsOptions (every field; the MMF model
                                        # builds it from models/configs/cots.yaml)
    output = net(batch, update=0)       # train: {"losses": {"itc", "kl", "cmlm", "cmvm"},
                                        #  "image_embedding", "text_embedding"[, "kept_fraction"]}
    net.embed_images(images); net.embed_texts(["red dress"])   # (N, D) unit norm

The MMF model `cots` (models/cots.py) is the same network behind MMF's BaseModel.

What one training step does (the building blocks are in modules/cots.py):
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
   (``image_tower``): ``cnn`` (CMVM blanks the masked patches' pixels) or
   ``vit`` (the paper's: a ViT over patch tokens, the masked patches replaced
   by a learned mask token before the transformer);
6. every pair's momentum features (filtered or not) are gathered from all
   ranks and pushed into the queues; every similarity into the filter.
Filtered pairs leave all four losses. A loss weight of 0 skips that task.
With ``product_id`` in the batch (``mask_same_product``), keys of the same
product other than the pair itself are not used as negatives.

Batch keys (B = batch): ``image`` (B, 3, H, W); ``input_ids``,
``attention_mask`` (B, L), optional ``token_type_ids``; optional
``product_id`` (B,); optional ``image_2`` (B, 3, H, W); cmlm:
``masked_input_ids``, ``mlm_labels`` (B, L) (made here by token-level
masking when absent); cmvm: ``patch_mask`` (B, N) bool (random cells at
``cmvm.mask_ratio`` when absent; resized to the VQ grid when N differs; with
the ViT tower the VQ grid is the patch grid).

State that survives a resume (parameters or registered buffers):
``momentum_encoders.*``, ``queue.{image,text,ids,pointer,count}``,
``momentum_filter.history.{similarity,pointer,count}``. Online towers loaded
without their ``momentum_encoders.*`` also become the momentum towers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from mmf_fashion.modules import cots as cots_ops
from mmf_fashion.modules.losses import LogitScale, contrastive_loss
from mmf_fashion.modules.two_stream import (
    TOWER_NAMES,
    TwoStreamMixin,
    average_view_embeddings,
    frozen_copy,
    image_features,
    l2_normalize,
    text_features,
)

TASKS = ("itc", "kl", "cmlm", "cmvm")
IMAGE_TOWERS = ("cnn", "vit")
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


# ------------------------------------------------------------------ options
@dataclass
class CotsLossWeights:
    itc: float
    kl: float
    cmlm: float
    cmvm: float


@dataclass
class CotsFilterOptions:
    enabled: bool
    k: float
    size: int
    min_count: int
    start_update: int


@dataclass
class CotsCmlmOptions:
    probability: float
    fusion: str


@dataclass
class CotsCmvmOptions:
    mask_ratio: float
    hidden_size: int
    fusion: str
    tokenizer: str
    tokenizer_checkpoint: Optional[str]
    tokenizer_config: Dict[str, Any]
    random_tokenizer_seed: int


@dataclass
class CotsOptions:
    """Every option of COTS, no defaults: they live in models/configs/cots.yaml (documented there)."""

    image_tower: str
    image_encoder: str
    image_pretrained: Optional[str]
    vit: Dict[str, Any]
    text_encoder: Dict[str, Any]
    embed_dim: int
    text_pooling: str
    temperature: float
    learnable_temperature: bool
    max_scale: float
    momentum: float
    queue_size: int
    mask_same_product: bool
    average_views: bool
    max_text_length: int
    loss_weights: CotsLossWeights
    filter: CotsFilterOptions
    cmlm: CotsCmlmOptions
    cmvm: CotsCmvmOptions


def build_image_tokenizer(cmvm: CotsCmvmOptions) -> nn.Module:
    """The frozen VQ tokenizer whose codes CMVM predicts.

    ``tokenizer: checkpoint``: the trained VQ-VAE at ``tokenizer_checkpoint``;
    none set, or no such file, is an error that says how to get one.
    ``tokenizer: random``: a randomly initialised frozen VQ-VAE (seeded, the
    same on every rank), only when asked for by name.
    """
    from mmf_fashion.modules.vqvae import VQVAE, VQTokenizer, load_frozen_tokenizer, vqvae_options

    tokenizer_config = cmvm.tokenizer_config or {}
    source = str(cmvm.tokenizer or "checkpoint").strip().lower()
    if source not in TOKENIZER_SOURCES:
        raise ValueError(f"model_config.cots.cmvm.tokenizer must be one of {TOKENIZER_SOURCES}, got {source!r}")
    if source == "checkpoint":
        path = cmvm.tokenizer_checkpoint
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
    torch.manual_seed(int(cmvm.random_tokenizer_seed))  # the same random tokenizer on every rank
    try:
        tokenizer = VQTokenizer(VQVAE(**vqvae_options(tokenizer_config)))
    finally:
        torch.random.set_rng_state(seed_state)
    return tokenizer


def square_grid(cells: int):
    side = int(round(cells**0.5))
    if side * side != cells:
        raise ValueError(f"patch_mask has {cells} cells: expected a square grid (e.g. 49 = 7x7)")
    return side, side


class COTSMethods(TwoStreamMixin):
    """Mixin holding COTS's modules and maths (see COTSNetwork and models/cots.py)."""

    def build_network(self, options: CotsOptions) -> None:
        self.build_towers(
            image_encoder=options.image_encoder,
            image_pretrained=options.image_pretrained,
            text_encoder=options.text_encoder,
            embed_dim=int(options.embed_dim),
            text_pooling=str(options.text_pooling),
        )
        weights = options.loss_weights
        self.loss_weights = {task: float(getattr(weights, task)) for task in TASKS}
        self.image_tower = str(options.image_tower or "cnn").strip().lower()
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"model_config.cots.image_tower must be one of {IMAGE_TOWERS}, got {self.image_tower!r}")
        if self.image_tower == "vit":
            # replaces the CNN tower built above; the mask token only exists where CMVM uses it
            vit = dict(options.vit or {})
            self.image_encoder = cots_ops.MaskedPatchViT(**vit, use_mask_token=self.loss_weights["cmvm"] > 0)
            self.image_projection = nn.Linear(self.image_encoder.out_channels, self.embed_dim)
        self.momentum_encoders = nn.ModuleDict({name: frozen_copy(getattr(self, name)) for name in TOWER_NAMES})
        self.momentum = float(options.momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"model_config.cots.momentum must be in [0, 1], got {self.momentum}")
        self.logit_scale = LogitScale(
            init=1.0 / float(options.temperature),
            learnable=options.learnable_temperature,
            max_value=float(options.max_scale),
        )
        queue_size = int(options.queue_size)
        self.mask_same_product = options.mask_same_product
        queue_fields = {"image": self.embed_dim, "text": self.embed_dim, "ids": (1, torch.long)}
        self.queue = cots_ops.FifoQueue(queue_size, queue_fields) if queue_size > 0 else None
        amf = options.filter
        self.filter_start_update = int(amf.start_update)
        self.momentum_filter = (
            cots_ops.MomentumFilter(size=int(amf.size), k=float(amf.k), min_count=int(amf.min_count))
            if amf.enabled
            else None
        )
        self.average_views = options.average_views
        self.max_text_length = int(options.max_text_length)
        self.current_update = 0

        self.mlm_probability = float(options.cmlm.probability)
        if self.loss_weights["cmlm"] > 0:
            self.cmlm_head = cots_ops.CrossModalTokenHead(
                self.text_hidden_size,
                self.embed_dim,
                int(self.text_encoder.config.vocab_size),
                fusion=str(options.cmlm.fusion),
            )
        cmvm = options.cmvm
        self.patch_mask_ratio = float(cmvm.mask_ratio)
        if self.loss_weights["cmvm"] > 0:
            self.image_tokenizer = build_image_tokenizer(cmvm)
            if self.image_tower == "vit":
                self._check_vit_matches_tokenizer()
            self.cmvm_head = cots_ops.CrossModalTokenHead(
                self.image_channels,
                self.embed_dim,
                int(self.image_tokenizer.codebook_size),
                hidden_size=int(cmvm.hidden_size),
                fusion=str(cmvm.fusion),
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
        return {
            "grid": hidden[:, 1:],
            "grid_size": encoder.grid_size,
            "pooled": cls,
            "embedding": l2_normalize(projection(cls)),
        }

    def image_features(self, images: torch.Tensor, patch_mask=None) -> Dict[str, torch.Tensor]:
        return self._tower_features(self.image_encoder, self.image_projection, images, patch_mask)

    def _online_image(self, batch) -> Dict[str, torch.Tensor]:
        features = self.image_features(batch["image"])
        if self.average_views and batch.get("image_2", None) is not None:
            second = self.encode_image(batch["image_2"])
            features["embedding"] = average_view_embeddings(torch.stack([features["embedding"], second], 1))
        return features

    @torch.no_grad()
    def _momentum_embeddings(self, batch):
        encoders = self.momentum_encoders
        image = self._tower_features(encoders["image_encoder"], encoders["image_projection"], batch["image"])
        image = image["embedding"]
        if self.average_views and batch.get("image_2", None) is not None:
            second = self._tower_features(encoders["image_encoder"], encoders["image_projection"], batch["image_2"])
            image = average_view_embeddings(torch.stack([image, second["embedding"]], 1))
        text = text_features(
            encoders["text_encoder"],
            encoders["text_projection"],
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids", None),
            pooling=self.text_pooling,
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
        """The usual load, then: a tower whose weights came without its momentum copy
        (an ALIGN or other two-tower checkpoint, pretrained_state_mapping of the online
        towers only) gets the momentum copy reset to it, as ``build_network`` does;
        otherwise the momentum keys would stay those of a randomly initialised tower."""
        result = super().load_state_dict(state_dict, *args, **kwargs)
        keys = list(state_dict.keys())
        for name in TOWER_NAMES:
            online_loaded = any(key.startswith(f"{name}.") for key in keys)
            momentum_loaded = any(key.startswith(f"momentum_encoders.{name}.") for key in keys)
            if online_loaded and not momentum_loaded:
                cots_ops.ema_update([getattr(self, name)], [self.momentum_encoders[name]], 0.0)
        return result

    # ------------------------------------------------------------ the step
    def run(self, batch: Mapping[str, Any], update: int = 0) -> Dict[str, Any]:
        """One forward (module docstring for the keys): {"losses": {task: scalar}, "image_embedding",
        "text_embedding"}; training also moves the momentum towers, queues and filter."""
        if not self.training:
            return self._run_eval(batch)
        self.current_update = int(update)
        self.momentum_update()
        image = self._online_image(batch)
        text = self.text_features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids", None))
        image_momentum, text_momentum = self._momentum_embeddings(batch)
        positive_similarity = (image_momentum * text_momentum).sum(-1)
        keep = self._keep_mask(positive_similarity)

        product_ids = batch.get("product_id", None)
        losses = {}
        if self.loss_weights["itc"] > 0 or self.loss_weights["kl"] > 0:
            instance = cots_ops.momentum_contrastive_losses(
                image["embedding"],
                text["embedding"],
                image_momentum,
                text_momentum,
                self.logit_scale(),
                queue=self.queue,
                keep=keep,
                ids=product_ids if self.mask_same_product else None,
            )
            for task in ("itc", "kl"):
                if self.loss_weights[task] > 0:
                    losses[task] = self.loss_weights[task] * instance[task]
        if self.loss_weights["cmlm"] > 0:
            losses["cmlm"] = self.loss_weights["cmlm"] * self._cmlm_loss(batch, image["embedding"], keep)
        if self.loss_weights["cmvm"] > 0:
            losses["cmvm"] = self.loss_weights["cmvm"] * self._cmvm_loss(batch, text["embedding"], keep)

        # every pair enters the queues and the filter's history, kept or not
        if self.queue is not None:
            # -1: a batch without product ids; real ids are >= 0, so it never matches
            ids = product_ids if product_ids is not None else torch.full_like(positive_similarity, -1, dtype=torch.long)
            self.queue.enqueue(image=image_momentum, text=text_momentum, ids=ids.reshape(-1, 1).long())
        if self.momentum_filter is not None:
            self.momentum_filter.update(positive_similarity)
        output = {"losses": losses, "image_embedding": image["embedding"], "text_embedding": text["embedding"]}
        if keep is not None:
            output["kept_fraction"] = keep.float().mean().detach()
        return output

    def _keep_mask(self, positive_similarity: torch.Tensor) -> Optional[torch.Tensor]:
        if self.momentum_filter is None:
            return None
        if self.current_update < self.filter_start_update:
            return torch.ones_like(positive_similarity, dtype=torch.bool)
        return self.momentum_filter.keep_mask(positive_similarity)

    def _run_eval(self, batch) -> Dict[str, Any]:
        image_embedding = self._online_image(batch)["embedding"]
        text_embedding = self.encode_text(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids", None)
        )
        # in-batch loss only: evaluation must not touch the queues or the momentum towers
        loss = contrastive_loss(image_embedding, text_embedding, self.logit_scale(), gather=False)
        return {"losses": {"itc": loss}, "image_embedding": image_embedding, "text_embedding": text_embedding}

    def _mlm_inputs(self, batch):
        masked = batch.get("masked_input_ids", None)
        labels = batch.get("mlm_labels", None)
        if masked is not None and labels is not None:
            return masked, labels
        tokenizer = self.tokenizer()
        return cots_ops.mask_tokens(
            batch["input_ids"],
            batch["attention_mask"],
            tokenizer.mask_token_id,
            int(self.text_encoder.config.vocab_size),
            tokenizer.all_special_ids,
            self.mlm_probability,
        )

    def _cmlm_loss(self, batch, image_global: torch.Tensor, keep) -> torch.Tensor:
        masked_ids, labels = self._mlm_inputs(batch)
        hidden = self.text_encoder(
            input_ids=masked_ids,
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids", None),
        ).last_hidden_state
        return cots_ops.masked_token_loss(self.cmlm_head, hidden, image_global, labels.long(), keep)

    def _cmvm_loss(self, batch, text_global: torch.Tensor, keep) -> torch.Tensor:
        images = batch["image"]
        codes = self.image_tokenizer.encode_codes(images)  # (B, h*w)
        code_hw = self.image_tokenizer.grid_shape(*images.shape[-2:])
        patch_mask = batch.get("patch_mask", None)
        if patch_mask is None:
            patch_mask = cots_ops.random_patch_mask(
                images.shape[0], code_hw[0] * code_hw[1], self.patch_mask_ratio, device=images.device
            )
        else:
            source = square_grid(patch_mask.shape[1])
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


class COTSNetwork(COTSMethods, nn.Module):
    """COTS without MMF: ``COTSNetwork(options)(batch, update)``."""

    def __init__(self, options: CotsOptions):
        super().__init__()
        self.build_network(options)

    def forward(self, batch: Mapping[str, Any], update: int = 0) -> Dict[str, Any]:
        return self.run(batch, update)
