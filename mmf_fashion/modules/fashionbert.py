"""FashionBERT in plain torch: image patches + text in one BERT (single stream).

Cheatsheet::

    from mmf_fashion.modules.fashionbert import FashionBert, FashionBertOptions
    net = FashionBert(FashionBertOptions(
        image_encoder="resnet18", grid_size=4, patch_size=16,
        text_encoder={"name": "tiny", "hidden_size": 32, "num_hidden_layers": 1,
                      "num_attention_heads": 2}))
    feats = net.encode_patches(images)                       # (B, N, C), N = grid**2
    out = net.pretraining_losses(feats, masked_input_ids, attention_mask,
                                 mlm_labels, product_id, subcategory_id)
    out["loss"].backward()                                   # adaptive-weighted sum
    logits = net.alignment_logits(feats, input_ids, attention_mask)   # (B, 2)
    scores = net.score_pairs(images, input_ids, attention_mask)       # (P,)

Decisions (MODELS.md, FashionBERT section):
- Patches (fashionbert_patches.py): a grid_size x grid_size grid, row-major,
  the image resized to a multiple of the grid first when needed; each patch
  through a torchvision CNN + global average pooling to a C-d feature (2048
  for resnet50); optional disk cache of the features (frozen encoder only).
- Input: [text tokens ; patch tokens]; text tokens use BERT's own word,
  position and token-type embeddings; patch tokens = projection (no bias) +
  patch position embedding (one per grid cell) + one patch segment embedding,
  then LayerNorm and dropout. With segments="query_title_image" the text is
  [CLS] query [SEP] title [SEP] (token type 0 for the query, 1 for the title).
- Masked patch modelling: `patch_mask_ratio` (10%) of the patches of every
  row (at least one) have their feature set to zero; a linear head predicts
  the original feature; loss KL(softmax(target) || softmax(pred)) per masked
  patch ("kl", default) or the mean squared error ("mse"). The target is
  detached: it must not be pulled towards the prediction. With a trainable,
  randomly initialised patch CNN the targets themselves can drift towards
  uniform features that make the KL trivial (seen in the CPU demo: 0.3 ->
  0.005 in 100 updates); a pretrained and/or frozen CNN avoids that.
- Alignment: a 2-way head on BERT's pooled [CLS] (label 1 = matched). A
  fraction `negative_fraction` of the rows get the image of another product
  of the same subcategory in the batch; when a row's subcategory has no other
  product in the batch, any other product; when the batch holds a single
  product, the row stays matched. MLM and masked patch losses are computed on
  matched rows only (a text does not describe a swapped image).
- Adaptive loss weights (closed form, K tasks): g = softmax(L)^2,
  w_i = (alpha*K - g_i)^-1 / sum_j (alpha*K - g_j)^-1, loss = sum_i w_i L_i.
  The weights are detached by default: they are the solution of a separate
  sub-problem that rescales the task gradients, not a path to lower the loss
  by moving weight between tasks. `adaptive=False` uses fixed weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.encoders import build_text_encoder
from mmf_fashion.modules.fashionbert_patches import (  # noqa: F401  (re-exported)
    PatchFeatureCache, PatchFeatureEncoder, fit_to_grid, merge_patches, precompute_patch_features,
    split_into_patches)

TASKS = ("mlm", "mpm", "alignment")
SEGMENTS = ("text_image", "query_title_image")
MPM_LOSSES = ("kl", "mse")
IGNORE_INDEX = -100


# ------------------------------------------------------------------ options
@dataclass
class FashionBertOptions:
    """Everything that shapes the network (the MMF adapter fills it from YAML)."""

    image_encoder: str = "resnet50"
    image_pretrained: Optional[str] = None
    freeze_image_encoder: bool = False
    patch_chunk_size: int = 0  # patches per CNN call (0 = all at once)
    grid_size: int = 8
    patch_size: Optional[int] = None  # pixels; None = ceil(side / grid_size)
    patch_cache_file: Optional[str] = None
    patch_cache_flush_every: int = 256
    eval_patch_memo: int = 4096  # images whose patch features eval reuses (0 = off)
    text_encoder: Dict[str, Any] = field(default_factory=lambda: {"name": "tiny"})
    segments: str = "text_image"
    tasks: Tuple[str, ...] = TASKS
    patch_mask_ratio: float = 0.1
    mpm_loss: str = "kl"
    negative_fraction: float = 0.5
    adaptive_weights: bool = True
    adaptive_alpha: float = 1.0
    detach_weights: bool = True
    fixed_weights: Dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in TASKS})
    num_labels: int = 0  # > 0 builds the classification head
    heads: Tuple[str, ...] = ("mlm", "mpm", "alignment")

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        self.heads = tuple(self.heads)
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"fashionbert tasks {list(self.tasks)}: choose a non-empty subset of {list(TASKS)}")
        if self.segments not in SEGMENTS:
            raise ValueError(f"fashionbert segments '{self.segments}': choose one of {list(SEGMENTS)}")
        if self.mpm_loss not in MPM_LOSSES:
            raise ValueError(f"fashionbert mpm_loss '{self.mpm_loss}': choose one of {list(MPM_LOSSES)}")
        if self.grid_size < 1:
            raise ValueError(f"fashionbert grid_size must be >= 1, got {self.grid_size}")
        if not 0.0 < self.patch_mask_ratio < 1.0:
            raise ValueError(f"fashionbert patch_mask_ratio must be in (0, 1), got {self.patch_mask_ratio}")
        if not 0.0 <= self.negative_fraction < 1.0:
            raise ValueError(f"fashionbert negative_fraction must be in [0, 1), got {self.negative_fraction}")
        if self.adaptive_weights and len(self.tasks) > 1 and self.adaptive_alpha * len(self.tasks) <= 1.0:
            raise ValueError(
                f"fashionbert adaptive_alpha * K must exceed 1 (g_i <= 1 would make a weight negative "
                f"or infinite): alpha={self.adaptive_alpha}, K={len(self.tasks)}"
            )
        if self.patch_cache_file and not self.freeze_image_encoder:
            raise ValueError(
                f"fashionbert patch_cache_file '{self.patch_cache_file}': cached patch features are only "
                "valid for a frozen image encoder; set freeze_image_encoder: true"
            )

    @property
    def num_patches(self) -> int:
        return self.grid_size * self.grid_size


class PatchEmbedding(nn.Module):
    """(B, N, C) patch features -> (B, N, hidden) input tokens: projection
    without bias + position embedding per grid cell + a segment embedding."""

    def __init__(self, feature_dim: int, hidden_size: int, num_patches: int,
                 dropout: float = 0.1, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.projection = nn.Linear(feature_dim, hidden_size, bias=False)
        self.position_embeddings = nn.Embedding(num_patches, hidden_size)
        self.segment_embedding = nn.Embedding(1, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        for module in (self.projection, self.position_embeddings, self.segment_embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        num = patch_features.shape[1]
        if num != self.position_embeddings.num_embeddings:
            raise ValueError(f"fashionbert: {num} patches, the model was built for "
                             f"{self.position_embeddings.num_embeddings}")
        tokens = self.projection(patch_features) + self.position_embeddings.weight + self.segment_embedding.weight
        return self.dropout(self.layer_norm(tokens))


class MaskedTokenHead(nn.Module):
    """BERT's MLM head: dense-GELU-LayerNorm, then the (tied) word embeddings."""

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                       nn.LayerNorm(hidden_size, eps=layer_norm_eps))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ word_embeddings.t() + self.bias


# ------------------------------------------------------------- task pieces
def sample_alignment_negatives(product_id: torch.Tensor, subcategory_id: Optional[torch.Tensor] = None,
                               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """For each row, the batch row whose image serves as its negative, or -1.

    Preference: a random row of another product with the same subcategory;
    else a random row of any other product; else -1 (one product in the batch).
    Without subcategory_id every other product is a candidate.
    """
    product_id = product_id.reshape(-1)
    other_product = product_id[:, None] != product_id[None, :]
    if subcategory_id is not None:
        same_subcategory = subcategory_id.reshape(-1)[:, None] == subcategory_id.reshape(-1)[None, :]
        preferred = other_product & same_subcategory
        pool = torch.where(preferred.any(1, keepdim=True), preferred, other_product)
    else:
        pool = other_product
    noise = torch.rand(pool.shape, generator=generator).to(pool.device)
    choice = noise.masked_fill(~pool, -1.0).argmax(1)
    return torch.where(pool.any(1), choice, torch.full_like(choice, -1))


def choose_negative_rows(partner: torch.Tensor, fraction: float,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Bool (B,): which rows get a negative image; round(fraction*B) rows among
    those with a partner, never all B rows (one matched row always remains)."""
    batch = partner.shape[0]
    candidates = (partner >= 0).nonzero().flatten().cpu()
    count = min(int(round(fraction * batch)), candidates.numel(), max(batch - 1, 0))
    order = torch.randperm(candidates.numel(), generator=generator)[:count]
    rows = torch.zeros(batch, dtype=torch.bool)
    rows[candidates[order]] = True
    return rows.to(partner.device)


def random_patch_mask(batch: int, num_patches: int, ratio: float,
                      generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Bool (B, N): round(ratio*N) (at least one) random patches per row are True."""
    count = max(1, int(round(ratio * num_patches)))
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.to(device) if device is not None else mask


def masked_patch_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """(P, C) predictions of the masked patches against their original features (P, C).

    kl: mean over patches of KL(softmax(target) || softmax(prediction));
    mse: mean squared error. The target is detached.
    """
    target = target.detach()
    if kind == "kl":
        log_target = F.log_softmax(target.float(), dim=-1)
        log_prediction = F.log_softmax(prediction.float(), dim=-1)
        return (log_target.exp() * (log_target - log_prediction)).sum(-1).mean()
    if kind == "mse":
        return F.mse_loss(prediction.float(), target.float())
    raise ValueError(f"masked_patch_loss: unknown kind '{kind}', choose one of {list(MPM_LOSSES)}")


def adaptive_loss_weights(losses: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Closed-form FashionBERT weights of K task losses (K,) -> (K,), summing to 1.

    g = softmax(L)^2; w_i = (alpha*K - g_i)^-1 / sum_j (alpha*K - g_j)^-1.
    """
    num_tasks = losses.numel()
    if num_tasks == 1:  # one task: the formula gives 1 (and 0/0 when alpha = 1)
        return torch.ones_like(losses.float().reshape(-1))
    g = torch.softmax(losses.float().reshape(-1), dim=0) ** 2
    inverse = 1.0 / (alpha * num_tasks - g)
    return inverse / inverse.sum()


def combine_losses(losses: Mapping[str, torch.Tensor], adaptive: bool = True, alpha: float = 1.0,
                   detach: bool = True, fixed_weights: Optional[Mapping[str, float]] = None
                   ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Weighted sum of named losses -> (total, {name: weight})."""
    names = list(losses)
    stacked = torch.stack([losses[name].float().reshape(()) for name in names])
    if adaptive:
        weights = adaptive_loss_weights(stacked.detach() if detach else stacked, alpha)
    else:
        fixed_weights = fixed_weights or {}
        weights = stacked.new_tensor([float(fixed_weights.get(name, 1.0)) for name in names])
    total = (weights * stacked).sum()
    return total, {name: weights[i] for i, name in enumerate(names)}


def query_title_inputs(query_ids: torch.Tensor, query_mask: torch.Tensor, title_ids: torch.Tensor,
                       title_mask: torch.Tensor, title_labels: Optional[torch.Tensor] = None):
    """Join [CLS] query [SEP] and [CLS] title [SEP] into [CLS] query [SEP] title [SEP].

    The title's leading [CLS] is dropped; padding stays inside each segment.
    Returns (input_ids, attention_mask, token_type_ids, labels-or-None), all (B, Lq + Lt - 1);
    token type 0 = query, 1 = title; query positions carry the ignore label.
    """
    ids = torch.cat([query_ids, title_ids[:, 1:]], dim=1)
    mask = torch.cat([query_mask, title_mask[:, 1:]], dim=1)
    types = torch.cat([torch.zeros_like(query_ids), torch.ones_like(title_ids[:, 1:])], dim=1)
    labels = None
    if title_labels is not None:
        labels = torch.cat([torch.full_like(query_ids, IGNORE_INDEX), title_labels[:, 1:]], dim=1)
    return ids, mask, types, labels


def _zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (no positions to predict in this batch)."""
    return sum(tensor.sum() for tensor in tensors) * 0.0


# ------------------------------------------------------------------ network
class FashionBertMixin:
    """The FashionBERT network, written against attributes of `self`.

    Mixed into an nn.Module (FashionBert below; the MMF adapter in
    mmf_fashion/models/fashionbert.py) so the submodules sit at the top level
    with the names the trainer's lr multipliers target: image_encoder,
    text_encoder, image_projection, mlm_head, mpm_head, alignment_head,
    classification_head. Call `build_network(options)` once from __init__/build.
    """

    def build_network(self, options: FashionBertOptions) -> None:
        self.options = options
        self.image_encoder = PatchFeatureEncoder(
            options.image_encoder, options.grid_size, options.patch_size,
            pretrained=options.image_pretrained, freeze=options.freeze_image_encoder,
            chunk_size=options.patch_chunk_size,
        )
        self.text_encoder = build_text_encoder({**dict(options.text_encoder), "add_pooling_layer": True})
        bert_config = self.text_encoder.config
        hidden = bert_config.hidden_size
        feature_dim = self.image_encoder.out_channels
        self.image_projection = PatchEmbedding(feature_dim, hidden, options.num_patches,
                                               dropout=bert_config.hidden_dropout_prob,
                                               layer_norm_eps=bert_config.layer_norm_eps)
        if "mlm" in options.heads:
            self.mlm_head = MaskedTokenHead(hidden, bert_config.vocab_size, bert_config.layer_norm_eps)
        if "mpm" in options.heads:
            self.mpm_head = nn.Linear(hidden, feature_dim)
        if "alignment" in options.heads:
            self.alignment_head = nn.Linear(hidden, 2)
        if "classification" in options.heads:
            if options.num_labels < 1:
                raise ValueError("fashionbert classification head: set num_labels (e.g. 121 subcategories)")
            self.classification_head = nn.Sequential(nn.Dropout(bert_config.hidden_dropout_prob),
                                                     nn.Linear(hidden, options.num_labels))
        self.patch_cache = None
        if options.patch_cache_file:
            signature = {"encoder": options.image_encoder, "weights": options.image_pretrained,
                         "grid_size": options.grid_size, "patch_size": options.patch_size}
            self.patch_cache = PatchFeatureCache(options.patch_cache_file, signature,
                                                 options.patch_cache_flush_every)

    # ------------------------------------------------------------ encoding
    def encode_patches(self, images: torch.Tensor, image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images (B, 3, H, W) [, image_ids (B,)] -> patch features (B, N, C).

        With image_ids, features are reused by image id: from the disk cache
        (patch_cache_file, frozen encoder) or, in eval mode without gradient,
        from an in-memory memo that lives for one evaluation (cleared by
        every train()/eval() call), so pair scoring runs the CNN once per
        image instead of once per pair.
        """
        store = self._patch_store(image_ids)
        if store is None:
            return self.image_encoder(images)
        ids = [int(i) for i in image_ids.reshape(-1).tolist()]
        new_ids = list(dict.fromkeys(key for key in ids if key not in store))
        computed: Dict[int, torch.Tensor] = {}
        if new_ids:
            rows = torch.tensor([ids.index(key) for key in new_ids], device=images.device)
            with torch.no_grad():
                computed = dict(zip(new_ids, self.image_encoder(images[rows])))
            self._remember(computed)
        features = [computed[key] if key in computed else store[key] for key in ids]
        return torch.stack([f.to(device=images.device) for f in features]).to(images.dtype)

    def _patch_store(self, image_ids: Optional[torch.Tensor]) -> Optional[Dict[int, torch.Tensor]]:
        if image_ids is None:
            return None
        if self.patch_cache is not None:
            return self.patch_cache.features
        if self.training or torch.is_grad_enabled() or self.options.eval_patch_memo <= 0:
            return None
        return self.__dict__.setdefault("_eval_patch_memo", {})

    def _remember(self, computed: Dict[int, torch.Tensor]) -> None:
        if self.patch_cache is not None:
            self.patch_cache.put(list(computed), torch.stack(list(computed.values())))
            return
        memo = self.__dict__.setdefault("_eval_patch_memo", {})
        if len(memo) + len(computed) > self.options.eval_patch_memo:
            memo.clear()  # bounded memory: start over rather than grow
        memo.update({key: value.detach() for key, value in computed.items()})

    def train(self, mode: bool = True):
        self.__dict__["_eval_patch_memo"] = {}  # the weights may change: forget memoised features
        return super().train(mode)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self.__dict__["_eval_patch_memo"] = {}
        return super().load_state_dict(state_dict, *args, **kwargs)

    def flush_patch_cache(self) -> None:
        """Write the patch features computed so far (no-op without a cache)."""
        if self.patch_cache is not None:
            self.patch_cache.save()

    def fuse(self, patch_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             token_type_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One BERT over [text ; patches].

        patch_features (B, N, C), input_ids / attention_mask / token_type_ids
        (B, L) -> (sequence (B, L + N, hidden), pooled [CLS] (B, hidden)).
        """
        from transformers.masking_utils import create_bidirectional_mask

        if patch_features.shape[0] != input_ids.shape[0]:
            raise ValueError(f"fashionbert: {patch_features.shape[0]} images for {input_ids.shape[0]} texts")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        text_tokens = self.text_encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        patch_tokens = self.image_projection(patch_features.to(text_tokens.dtype))
        tokens = torch.cat([text_tokens, patch_tokens], dim=1)
        patch_mask = attention_mask.new_ones(patch_tokens.shape[:2])
        mask = torch.cat([attention_mask, patch_mask], dim=1)
        extended = create_bidirectional_mask(config=self.text_encoder.config, inputs_embeds=tokens,
                                             attention_mask=mask)
        sequence = self.text_encoder.encoder(tokens, attention_mask=extended).last_hidden_state
        return sequence, self.text_encoder.pooler(sequence)

    # --------------------------------------------------------------- tasks
    def alignment_logits(self, patch_features: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
                         ) -> torch.Tensor:
        """(B, N, C) patch features and (B, L) text of each pair -> (B, 2) logits, class 1 = matched."""
        _, pooled = self.fuse(patch_features, input_ids, attention_mask, token_type_ids)
        return self.alignment_head(pooled)

    def score_pairs(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: Optional[torch.Tensor] = None,
                     image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pair scores (P,) = logit(matched) - logit(not matched) for P image/text pairs
        (images (P, 3, H, W), texts (P, L)); higher = better match."""
        logits = self.alignment_logits(self.encode_patches(images, image_ids), input_ids,
                                       attention_mask, token_type_ids)
        return logits[:, 1] - logits[:, 0]

    def classification_logits(self, patch_features: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
                              ) -> torch.Tensor:
        """(B, N, C) patches + (B, L) text -> (B, num_labels) logits from the pooled [CLS]."""
        _, pooled = self.fuse(patch_features, input_ids, attention_mask, token_type_ids)
        return self.classification_head(pooled)

    def _pair_with_negatives(self, patch_features, product_id, subcategory_id, generator):
        partner = sample_alignment_negatives(product_id, subcategory_id, generator)
        negative = choose_negative_rows(partner, self.options.negative_fraction, generator)
        image_rows = torch.where(negative, partner, torch.arange(partner.shape[0], device=partner.device))
        return patch_features[image_rows], negative, image_rows

    def alignment_loss(self, patch_features: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, product_id: torch.Tensor,
                       subcategory_id: Optional[torch.Tensor] = None,
                       token_type_ids: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Matched / not-matched cross entropy with same-subcategory negatives.

        Returns {"loss", "logits" (B, 2), "labels" (B,), "image_rows" (B,)}:
        row b pairs text b with the image of row image_rows[b].
        """
        paired, negative, image_rows = self._pair_with_negatives(patch_features, product_id,
                                                                  subcategory_id, generator)
        logits = self.alignment_logits(paired, input_ids, attention_mask, token_type_ids)
        labels = (~negative).long()
        return {"loss": F.cross_entropy(logits, labels), "logits": logits, "labels": labels,
                "image_rows": image_rows}

    def pretraining_losses(self, patch_features: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor, mlm_labels: Optional[torch.Tensor],
                           product_id: torch.Tensor, subcategory_id: Optional[torch.Tensor] = None,
                           token_type_ids: Optional[torch.Tensor] = None,
                           generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """MLM + masked patch modelling + alignment in one forward, weighted.

        patch_features (B, N, C) of each row's own image; input_ids (B, L) the
        (masked) text; mlm_labels (B, L) with -100 where nothing is predicted
        (needed when "mlm" is a task); product_id, subcategory_id (B,).
        Returns {"loss": weighted sum, "losses": {task: unweighted},
        "weights": {task: weight}, "alignment_logits" (B, 2),
        "alignment_labels" (B,), "patch_mask" (B, N) bool}.
        """
        options = self.options
        batch, num_patches = patch_features.shape[:2]
        if "alignment" in options.tasks:
            paired, negative, _ = self._pair_with_negatives(patch_features, product_id, subcategory_id, generator)
        else:  # no alignment task: no reason to swap images
            paired, negative = patch_features, torch.zeros(batch, dtype=torch.bool, device=patch_features.device)
        matched = ~negative
        patch_mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=paired.device)
        if "mpm" in options.tasks:
            patch_mask = random_patch_mask(batch, num_patches, options.patch_mask_ratio, generator, paired.device)
        model_input = paired.masked_fill(patch_mask.unsqueeze(-1), 0.0)
        sequence, pooled = self.fuse(model_input, input_ids, attention_mask, token_type_ids)
        text_hidden, patch_hidden = sequence[:, : input_ids.shape[1]], sequence[:, input_ids.shape[1]:]
        losses: Dict[str, torch.Tensor] = {}
        if "mlm" in options.tasks:
            if mlm_labels is None:
                raise ValueError("fashionbert MLM needs mlm_labels (turn the dataset's mlm option on)")
            selected = (mlm_labels != IGNORE_INDEX) & matched.unsqueeze(1)
            if bool(selected.any()):
                word_embeddings = self.text_encoder.embeddings.word_embeddings.weight
                logits = self.mlm_head(text_hidden[selected], word_embeddings)
                losses["mlm"] = F.cross_entropy(logits.float(), mlm_labels[selected])
            else:
                losses["mlm"] = _zero_loss(text_hidden, *self.mlm_head.parameters())
        if "mpm" in options.tasks:
            selected = patch_mask & matched.unsqueeze(1)
            prediction = self.mpm_head(patch_hidden[selected])
            losses["mpm"] = masked_patch_loss(prediction, paired[selected], options.mpm_loss)
        alignment_labels = matched.long()
        alignment_logits = self.alignment_head(pooled) if "alignment" in options.heads else None
        if "alignment" in options.tasks:
            losses["alignment"] = F.cross_entropy(alignment_logits, alignment_labels)
        total, weights = combine_losses(losses, options.adaptive_weights, options.adaptive_alpha,
                                        options.detach_weights, options.fixed_weights)
        return {"loss": total, "losses": losses, "weights": weights, "alignment_logits": alignment_logits,
                "alignment_labels": alignment_labels, "patch_mask": patch_mask}


class FashionBert(FashionBertMixin, nn.Module):
    """The plain torch FashionBERT (no MMF): `FashionBert(FashionBertOptions(...))`."""

    def __init__(self, options: Optional[FashionBertOptions] = None):
        super().__init__()
        self.build_network(options or FashionBertOptions())
