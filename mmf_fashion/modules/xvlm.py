"""X-VLM (multi-grained vision-language alignment) in plain torch.

Cheatsheet::

    from mmf_fashion.modules.xvlm import XVLMNetwork

    net = XVLMNetwork({"image_encoder": {"type": "vit", "image_size": 64, "patch_size": 16,
                                         "hidden_size": 64, "num_hidden_layers": 2},
                       "text_encoder": {"name": "tiny", "hidden_size": 64, "num_hidden_layers": 4,
                                        "fusion_layers": 2},   # or name: bert-base-uncased (6 + 6)
                       "embed_dim": 256})
    image_tokens = net.encode_image(images)                      # (B, 1 + N, Dv)
    pairs = net.build_pairs(image_tokens, input_ids, attention_mask, product_id=ids,
                            boxes=boxes, box_valid=valid, box_input_ids=phrase_ids,
                            box_attention_mask=phrase_mask)     # images + regions
    losses = {"itc": net.itc_loss(pairs), "itm": net.itm_loss(pairs),
              "mlm": net.mlm_loss(pairs, image_tokens), "mlm_region": net.region_mlm_loss(pairs)}
    losses["box_l1"], losses["box_giou"], _ = net.box_loss(pairs, image_tokens)
    net.embed_images(images), net.embed_texts(["red silk dress"])  # (N, E) L2-normalised
    net.match_scores({"image": images, "input_ids": ids, "attention_mask": mask})  # (P,)

Pieces (submodule names are what YAML lr multipliers target):
- image_encoder: a ViT returning [CLS] + patch tokens: transformers ViTModel
  from a local ViTConfig (type "vit") or torchvision's vit_b_16 / vit_b_32 /
  vit_l_16 ... (type "torchvision", name, optional pretrained weights); or
  torchvision's Swin (type "swin", name swin_t / swin_s / swin_b), whose
  [CLS] is the mean of its last-stage tokens, as in X-VLM.
- vision_to_cross: Linear(vision width, text width) in front of the fusion
  layers when the widths differ; with ``cross_encoder.key_value_width:
  vision`` it is an Identity and each fusion layer's cross-attention key and
  value read the vision width instead (official X-VLM, e.g. Swin-B 1024 ->
  BERT 768; mmf_fashion/convert/xvlm.py).
- text_encoder + cross_encoder: ONE BERT-style text model
  (modules/encoders.build_text_encoder) cut in two, as in X-VLM: text_encoder
  keeps the lower layers; cross_encoder holds the upper
  ``text_encoder.fusion_layers`` (default half) as transformers BertLayers with
  cross-attention, their self-attention and feed-forward weights copied from
  those upper layers, only the cross-attention random. The concept's attention
  mask restricts the cross-attention to the patches inside the box.
- itm_head, box_head: Linear(d, 2d) - LayerNorm - GELU - Linear(2d, 2 | 4).
- mlm_head: transform + decoder tied to the text encoder's word embeddings.
- itc_scale: 1 / temperature, learnable, init 1 / 0.07, temperature clamped
  to [0.001, 0.5].

A concept-text pair is a whole image with its caption or a region (box) with
its phrase. Whole images keep the ViT [CLS] and attend to every patch;
regions use the masked mean of their patches as [CLS] and attend only to
them (X-VLM). ITC, ITM and MLM run at both granularities (MLM: captions with
the whole image, phrases with their region); the box head sees the full image
and a region's phrase (whole-image captions have no box and are skipped).
A state dict whose fusion weights come from another split (or the old layout,
fusion layers stacked on a whole text model) is refused by name
(check_state_dict_layout), not half loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules import xvlm_ops as X
from mmf_fashion.modules.distributed import get_rank
from mmf_fashion.modules.encoders import build_text_encoder, build_tokenizer
from mmf_fashion.modules.losses import LogitScale
from mmf_fashion.modules.xvlm_layers import (  # noqa: F401  (re-exported)
    SPLIT_OPTION,
    CrossEncoder,
    HFViTTokens,
    MLMHead,
    TorchvisionViTTokens,
    additive_mask,
    build_fusion_layer,
    build_vit,
    fusion_layer_config,
    init_bert_style,
    layout_error,
    mark_old_layout,
    mlp_head,
    split_text_model,
)

# pairs without a product id get unique negative ids far below any product id:
# whole images from _IMAGE_ID_BASE down, regions from _REGION_ID_BASE down
_REGION_ID_BASE = -(2**40)
_IMAGE_ID_BASE = -(2**50)


@dataclass
class ConceptTextPairs:
    """P aligned (visual concept, text) pairs; the first `num_whole` are whole images with captions.

    image_index (P,): the image each concept comes from; patch_mask (P, N)
    bool; concept_tokens (P, 1 + N, Dv); concept_mask (P, 1 + N) long;
    text_ids, text_mask (P, L); text_hidden (P, L, Dt); concept_feat,
    text_feat (P, E) L2-normalised; ids (P,): pairs sharing an id are
    positives of each other; region_boxes (P - num_whole, 4) normalised
    (cx, cy, w, h) of the region rows.
    """

    image_index: torch.Tensor
    patch_mask: torch.Tensor
    concept_tokens: torch.Tensor
    concept_mask: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    text_hidden: torch.Tensor
    concept_feat: torch.Tensor
    text_feat: torch.Tensor
    ids: torch.Tensor
    num_whole: int
    region_boxes: torch.Tensor
    region_slot: torch.Tensor  # (P - num_whole, 2): (b, r) of each region row

    @property
    def num_pairs(self) -> int:
        return int(self.ids.shape[0])


def _pad_to(ids: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(ids, (0, length - ids.shape[-1])) if ids.shape[-1] < length else ids


def _config_dict(config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    return dict(config or {})


class XVLMMixin:
    """X-VLM's modules and maths; mixed into an nn.Module (XVLMNetwork, or the MMF adapter)."""

    def build_network(self, config: Mapping[str, Any]) -> None:
        config = _config_dict(config)
        image_config = _config_dict(config.get("image_encoder"))
        text_config = _config_dict(config.get("text_encoder"))
        text_config.setdefault("add_pooling_layer", False)
        cross_config = _config_dict(config.get("cross_encoder"))
        mlm_config = _config_dict(config.get("mlm"))
        embed_dim = int(config.get("embed_dim", 256))

        if cross_config.get("num_hidden_layers") is not None:
            raise ValueError(
                f"model_config.xvlm.cross_encoder.num_hidden_layers is gone: the fusion layers are "
                f"the upper layers of the text model; set model_config.xvlm.{SPLIT_OPTION} "
                f"(default: half of the text model's layers)"
            )
        fusion_layers = text_config.pop("fusion_layers", None)

        self.image_encoder = build_vit(image_config)
        self.text_encoder = build_text_encoder(text_config)
        upper = split_text_model(self.text_encoder, fusion_layers)
        bert_config = self.text_encoder.config
        width = int(bert_config.hidden_size)
        vision_width = self.image_encoder.hidden_size
        key_value_width = str(cross_config.get("key_value_width") or "text")
        if key_value_width not in ("text", "vision"):
            raise ValueError(
                f"model_config.xvlm.cross_encoder.key_value_width must be 'text' or 'vision', got '{key_value_width}'"
            )
        per_layer = key_value_width == "vision"
        self.cross_encoder = CrossEncoder(
            bert_config,
            upper,
            int(bert_config.num_hidden_layers),
            cross_config.get("dropout"),
            vision_width=vision_width if per_layer else None,
        )
        del upper
        shared = vision_width != width and not per_layer
        self.vision_to_cross = nn.Linear(vision_width, width) if shared else nn.Identity()
        self.image_projection = nn.Linear(vision_width, embed_dim)
        self.text_projection = nn.Linear(width, embed_dim)
        self.itm_head = mlp_head(width, 2)
        self.box_head = mlp_head(width, 4)
        self.mlm_head = MLMHead(self.text_encoder.get_input_embeddings(), float(bert_config.layer_norm_eps))
        # the fusion layers keep the text model's weights (CrossEncoder starts their cross-attention)
        for module in (
            self.vision_to_cross,
            self.image_projection,
            self.text_projection,
            self.itm_head,
            self.box_head,
            self.mlm_head,
        ):
            init_bert_style(module)
        temperature = float(config.get("temperature", 0.07))
        self.itc_scale = LogitScale(
            init=1.0 / temperature,
            min_value=1.0 / float(config.get("max_temperature", 0.5)),
            max_value=1.0 / float(config.get("min_temperature", 0.001)),
        )
        self.mlm_probability = float(mlm_config.get("probability", 0.25))
        self.mlm_max_masks = int(mlm_config.get("max_masks", 8))
        self.tokenizer_name = str(config.get("tokenizer", text_config.get("name", "tiny")))
        self.max_text_length = int(config.get("max_text_length", 40))
        self._tokenizer = None

    # ---- checkpoints ----------------------------------------------------
    def check_state_dict_layout(self, state_dict: Mapping[str, Any]) -> None:
        """ValueError naming text_encoder.fusion_layers when state_dict holds fusion weights
        of another text/fusion split (e.g. the old layout), instead of a partial load."""
        message = layout_error(state_dict, *(int(v) for v in self.cross_encoder.split.tolist()))
        if message:
            raise ValueError(message)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self.check_state_dict_layout(state_dict)
        return super().load_state_dict(state_dict, *args, **kwargs)

    # ---- encoders -------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def grid_hw(self) -> Tuple[int, int]:
        cells = self.image_encoder.image_size // self.image_encoder.patch_size
        return cells, cells

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> tokens (B, 1 + N, Dv): [CLS] then N = (S / p)^2 patches, row-major."""
        size = self.image_encoder.image_size
        if images.dim() != 4 or images.shape[-2:] != (size, size):
            raise ValueError(
                f"X-VLM image encoder expects images (B, 3, {size}, {size}), got {tuple(images.shape)}; "
                f"set model_config.xvlm.image_encoder.image_size to the image processor's size"
            )
        return self.image_encoder(images)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(P, L) ids and mask -> (P, L, Dt) hidden states of the text encoder."""
        return self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state

    def fuse(self, text_hidden, text_mask, concept_tokens, concept_mask) -> torch.Tensor:
        """Cross encoder: text (P, L, Dt) attends to the concept's tokens (P, 1 + N, Dv) -> (P, L, Dt)."""
        return self.cross_encoder(text_hidden, text_mask, self.vision_to_cross(concept_tokens), concept_mask)

    def fused_cls(
        self, text_hidden, text_mask, concept_tokens, concept_mask, bucket: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The cross encoder's [CLS] (P, Dt), computed per bucket of rows with the text cut to the
        bucket's longest real text (padding is masked out, so the result is the same, only cheaper).

        bucket (P,) long/bool or None: rows sharing a value are fused together (e.g. captions vs
        region phrases, which are much shorter).
        """
        if bucket is None:
            bucket = torch.zeros(text_mask.shape[0], dtype=torch.long, device=text_mask.device)
        output = text_hidden.new_zeros(text_hidden.shape[0], text_hidden.shape[-1])
        for value in torch.unique(bucket):
            rows = (bucket == value).nonzero().flatten()
            length = max(1, int(text_mask[rows].sum(1).max()))
            fused = self.fuse(
                text_hidden[rows, :length], text_mask[rows, :length], concept_tokens[rows], concept_mask[rows]
            )
            output = output.index_copy(0, rows, fused[:, 0])
        return output

    def concept_features(self, concept_cls: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(concept_cls), dim=-1)

    def text_features(self, text_cls: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(text_cls), dim=-1)

    def region_patch_masks(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) normalised (cx, cy, w, h) -> (..., N) bool patches inside each box."""
        size = self.image_encoder.image_size
        pixels = X.normalized_to_pixel_xywh(boxes, (size, size))
        return X.boxes_to_patch_mask(pixels, self.image_encoder.patch_size, self.grid_hw)

    # ---- pairs ------------------------------------------------------------
    def build_pairs(
        self,
        image_tokens: torch.Tensor,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        product_id: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        box_valid: Optional[torch.Tensor] = None,
        box_input_ids: Optional[torch.Tensor] = None,
        box_attention_mask: Optional[torch.Tensor] = None,
    ) -> ConceptTextPairs:
        """Whole-image pairs (image b, caption b) then region pairs (box r of image b, phrase r).

        image_tokens (B, 1 + N, Dv); input_ids / attention_mask (B, L) captions
        or None (regions only); product_id (B,) shares ITC positives between
        captions of one product; boxes (B, R, 4) normalised (cx, cy, w, h),
        box_valid (B, R) bool, box_input_ids / box_attention_mask (B, R, Lb)
        or None (images only).
        """
        batch, tokens, device = image_tokens.shape[0], image_tokens.shape[1], image_tokens.device
        num_patches = tokens - 1
        groups = []  # (image_index, patch_mask, ids, text ids, text mask): captions, then regions
        if input_ids is not None:
            whole_ids = (
                product_id.view(-1).long()
                if product_id is not None
                else (_IMAGE_ID_BASE - get_rank() * batch - torch.arange(batch, device=device))
            )
            groups.append(
                (
                    torch.arange(batch, device=device),
                    torch.ones(batch, num_patches, dtype=torch.bool, device=device),
                    whole_ids,
                    input_ids,
                    attention_mask,
                )
            )
        num_whole = batch if input_ids is not None else 0
        region_slot = torch.zeros(0, 2, dtype=torch.long, device=device)
        region_boxes = image_tokens.new_zeros(0, 4)
        if boxes is not None and box_input_ids is not None:
            valid = (
                box_valid.bool()
                if box_valid is not None
                else torch.ones(boxes.shape[:2], dtype=torch.bool, device=device)
            )
            region_slot = valid.nonzero()
            b_index, r_index = region_slot[:, 0], region_slot[:, 1]
            region_boxes = boxes[b_index, r_index].to(image_tokens.dtype)
            count = region_slot.shape[0]
            region_ids = (
                _REGION_ID_BASE - get_rank() * boxes.shape[0] * boxes.shape[1] - torch.arange(count, device=device)
            )
            if count:
                groups.append(
                    (
                        b_index,
                        self.region_patch_masks(region_boxes),
                        region_ids,
                        box_input_ids[b_index, r_index],
                        box_attention_mask[b_index, r_index],
                    )
                )
        if not groups:
            raise ValueError(
                "X-VLM needs captions (input_ids) or at least one valid region (boxes, box_valid, "
                "box_input_ids) in the batch"
            )
        # pad every text to the longest real text of the batch, no longer
        length = max(max(1, int(group[4].sum(-1).max())) for group in groups)
        image_index = torch.cat([group[0] for group in groups])
        patch_mask = torch.cat([group[1] for group in groups])
        ids = torch.cat([group[2] for group in groups])
        text_ids = torch.cat([_pad_to(group[3], length)[:, :length] for group in groups])
        text_mask = torch.cat([_pad_to(group[4], length)[:, :length] for group in groups])
        # captions and region phrases are encoded apart, each cut to its own longest text
        hidden_parts = []
        for group in groups:
            own = max(1, int(group[4].sum(-1).max()))
            hidden = self.encode_text(group[3][:, :own], group[4][:, :own])
            hidden_parts.append(F.pad(hidden, (0, 0, 0, length - own)) if own < length else hidden[:, :length])
        text_hidden = torch.cat(hidden_parts)

        concept_tokens, concept_mask = X.pool_concept(image_tokens[image_index], patch_mask)
        # whole images keep the ViT's own [CLS] (X-VLM); regions use the pooled one
        is_region = torch.arange(image_index.shape[0], device=device) >= num_whole
        cls = torch.where(is_region[:, None], concept_tokens[:, 0], image_tokens[image_index, 0])
        concept_tokens = torch.cat((cls.unsqueeze(1), concept_tokens[:, 1:]), dim=1)
        return ConceptTextPairs(
            image_index=image_index,
            patch_mask=patch_mask,
            concept_tokens=concept_tokens,
            concept_mask=concept_mask,
            text_ids=text_ids,
            text_mask=text_mask,
            text_hidden=text_hidden,
            concept_feat=self.concept_features(cls),
            text_feat=self.text_features(text_hidden[:, 0]),
            ids=ids,
            num_whole=num_whole,
            region_boxes=region_boxes,
            region_slot=region_slot,
        )

    # ---- losses -------------------------------------------------------------
    def itc_loss(self, pairs: ConceptTextPairs) -> torch.Tensor:
        """Concept-text contrastive loss over every pair (images and regions), gathered over ranks."""
        return X.itc_loss(pairs.concept_feat, pairs.text_feat, self.itc_scale(), pairs.ids)

    def itm_logits(
        self, concept_tokens, concept_mask, text_hidden, text_mask, bucket: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(P, 2) ITM logits (class 1 = match) from the cross encoder's [CLS]."""
        return self.itm_head(self.fused_cls(text_hidden, text_mask, concept_tokens, concept_mask, bucket))

    def itm_loss(self, pairs: ConceptTextPairs, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """Matching loss: every positive pair, one hard negative text per concept and one hard
        negative concept per text, sampled from the similarity softmax. None if no negative exists."""
        with torch.no_grad():
            similarity = self.itc_scale() * pairs.concept_feat @ pairs.text_feat.t()
        negative_text, negative_concept, has_text, has_concept = X.sample_itm_negatives(
            similarity, pairs.ids, generator
        )
        if not bool(has_text.any() or has_concept.any()):
            return None
        rows = torch.arange(pairs.num_pairs, device=pairs.ids.device)
        concept_rows = torch.cat((rows, rows[has_text], negative_concept[has_concept]))
        text_rows = torch.cat((rows, negative_text[has_text], rows[has_concept]))
        labels = torch.cat(
            (
                torch.ones_like(rows),
                torch.zeros(int(has_text.sum() + has_concept.sum()), dtype=torch.long, device=rows.device),
            )
        )
        logits = self.itm_logits(
            pairs.concept_tokens[concept_rows],
            pairs.concept_mask[concept_rows],
            pairs.text_hidden[text_rows],
            pairs.text_mask[text_rows],
            bucket=(text_rows >= pairs.num_whole).long(),
        )
        return F.cross_entropy(logits, labels)

    def mlm_loss(
        self,
        pairs: ConceptTextPairs,
        image_tokens: torch.Tensor,
        masked_input_ids: Optional[torch.Tensor] = None,
        mlm_labels: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Optional[torch.Tensor]:
        """Masked language modelling on the captions, conditioned on the whole image.

        masked_input_ids / mlm_labels (B, L): the data's masking; when None the
        captions are masked here (X-VLM: probability 0.25, at most 8 tokens).
        None when there are no captions or nothing to predict.
        """
        if pairs.num_whole == 0:
            return None
        caption_ids = pairs.text_ids[: pairs.num_whole]
        caption_mask = pairs.text_mask[: pairs.num_whole]
        if masked_input_ids is not None:
            # the pairs' captions are cut to the batch's longest real text; so are the data's
            length = caption_ids.shape[1]
            masked_input_ids = _pad_to(masked_input_ids, length)[:, :length]
            mlm_labels = F.pad(mlm_labels, (0, max(0, length - mlm_labels.shape[1])), value=-100)[:, :length]
        full = torch.ones(pairs.num_whole, image_tokens.shape[1], dtype=torch.long, device=image_tokens.device)
        return self._masked_lm(
            caption_ids, caption_mask, image_tokens[: pairs.num_whole], full, masked_input_ids, mlm_labels, generator
        )

    def region_mlm_loss(
        self, pairs: ConceptTextPairs, generator: Optional[torch.Generator] = None
    ) -> Optional[torch.Tensor]:
        """Masked language modelling on the region phrases, each fused with its box-pooled concept
        (X-VLM applies its three losses at every granularity). Masked here (probability 0.25, at
        most 8). None when the batch has no region or nothing to predict."""
        start = pairs.num_whole
        if pairs.num_pairs == start:
            return None
        mask = pairs.text_mask[start:]
        own = max(1, int(mask.sum(-1).max()))  # phrases are short: no need for the captions' length
        return self._masked_lm(
            pairs.text_ids[start:, :own],
            mask[:, :own],
            pairs.concept_tokens[start:],
            pairs.concept_mask[start:],
            None,
            None,
            generator,
        )

    def _masked_lm(
        self, text_ids, text_mask, concept_tokens, concept_mask, masked_input_ids, mlm_labels, generator
    ) -> Optional[torch.Tensor]:
        if masked_input_ids is None:
            tokenizer = self.tokenizer
            masked_input_ids, mlm_labels = X.mask_tokens(
                text_ids,
                text_mask,
                tokenizer.all_special_ids,
                tokenizer.mask_token_id,
                self.text_encoder.config.vocab_size,
                self.mlm_probability,
                self.mlm_max_masks,
                generator,
            )
        predicted = mlm_labels != -100
        if not bool(predicted.any()):
            return None
        hidden = self.encode_text(masked_input_ids, text_mask)
        fused = self.fuse(hidden, text_mask, concept_tokens, concept_mask)
        # vocabulary logits only where a token is predicted (the decoder is the costly part)
        return F.cross_entropy(self.mlm_head(fused[predicted]), mlm_labels[predicted])

    def predict_region_boxes(
        self, image_tokens: torch.Tensor, image_index: torch.Tensor, text_hidden: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Box head: full image (all patches) + phrase -> (K, 4) sigmoid normalised (cx, cy, w, h)."""
        tokens = image_tokens[image_index]
        full = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return self.box_head(self.fused_cls(text_hidden, text_mask, tokens, full)).sigmoid()

    def box_loss(
        self, pairs: ConceptTextPairs, image_tokens: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(L1, GIoU loss, predicted boxes (K, 4)) over the region pairs; Nones when there is none."""
        start = pairs.num_whole
        if pairs.num_pairs == start:
            return None, None, None
        predicted = self.predict_region_boxes(
            image_tokens, pairs.image_index[start:], pairs.text_hidden[start:], pairs.text_mask[start:]
        )
        l1, giou = X.box_regression_losses(predicted, pairs.region_boxes)
        return l1, giou, predicted

    # ---- inference ----------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, S, S) -> (N, E) L2-normalised whole-image embeddings."""
        return self.concept_features(self.encode_image(images)[:, 0])

    def image_transform(self):
        """PIL image -> (3, S, S) float, the evaluation pipeline (resize, centre crop, ImageNet norm)."""
        from torchvision.transforms import v2

        size = self.image_encoder.image_size
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(size),
                v2.CenterCrop(size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            ]
        )

    def tokenize(self, texts, device) -> Tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def embed_texts(self, texts) -> torch.Tensor:
        """texts list[str] -> (N, E) L2-normalised text embeddings."""
        device = self.image_projection.weight.device
        input_ids, attention_mask = self.tokenize(texts, device)
        return self.text_features(self.encode_text(input_ids, attention_mask)[:, 0])

    def match_scores(
        self,
        pairs: Union[Mapping[str, torch.Tensor], torch.Tensor],
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """ITM score of P (image, text) pairs: logit(match) - logit(no match), higher = better.

        Either a mapping with image (P, 3, S, S), input_ids and attention_mask
        (P, L) (metrics/rerank.py), or the three tensors as arguments.
        """
        if isinstance(pairs, Mapping) or hasattr(pairs, "keys"):
            images, input_ids, attention_mask = pairs["image"], pairs["input_ids"], pairs["attention_mask"]
        else:
            images = pairs
        if input_ids is None or attention_mask is None:
            raise ValueError("match_scores needs images, input_ids and attention_mask")
        image_tokens = self.encode_image(images)
        full = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        logits = self.itm_logits(image_tokens, full, self.encode_text(input_ids, attention_mask), attention_mask)
        return logits[:, 1] - logits[:, 0]

    def predict_boxes(
        self,
        images: torch.Tensor,
        box_input_ids: torch.Tensor,
        box_attention_mask: torch.Tensor,
        box_valid: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Grounding: images (B, 3, S, S), phrases (B, R, Lb) -> (B, R, 4) normalised (cx, cy, w, h);
        rows where box_valid is False are zeros."""
        batch, regions = box_input_ids.shape[:2]
        valid = (
            box_valid.bool()
            if box_valid is not None
            else torch.ones(batch, regions, dtype=torch.bool, device=box_input_ids.device)
        )
        image_tokens = self.encode_image(images)
        output = image_tokens.new_zeros(batch, regions, 4)
        slot = valid.nonzero()
        if slot.shape[0] == 0:
            return output
        ids = box_input_ids[slot[:, 0], slot[:, 1]]
        mask = box_attention_mask[slot[:, 0], slot[:, 1]]
        predicted = self.predict_region_boxes(image_tokens, slot[:, 0], self.encode_text(ids, mask), mask)
        output[slot[:, 0], slot[:, 1]] = predicted.to(output.dtype)
        return output


class XVLMNetwork(XVLMMixin, nn.Module):
    """Standalone X-VLM (no MMF): XVLMNetwork(config) with the keys of build_network."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.build_network(config or {})


def temperature(scale_module: LogitScale) -> float:
    """The current ITC temperature (1 / scale)."""
    return 1.0 / float(scale_module().detach())


__all__ = [
    "XVLMNetwork",
    "XVLMMixin",
    "ConceptTextPairs",
    "CrossEncoder",
    "MLMHead",
    "build_vit",
    "build_fusion_layer",
    "fusion_layer_config",
    "split_text_model",
    "layout_error",
    "mark_old_layout",
    "mlp_head",
    "additive_mask",
    "temperature",
]
