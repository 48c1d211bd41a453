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

Decisions (docs/models/fashionbert.md has the long version):
- Patches (fashionbert_patches.py): a grid_size x grid_size grid, row-major,
  each patch through a torchvision CNN + global average pooling (2048-d for
  resnet50); optional disk cache of the features (frozen encoder only).
- Input: [text tokens ; patch tokens] in one BERT; patch tokens = projection
  (no bias) + one position embedding per grid cell + a patch segment
  embedding. segments="query_title_image": [CLS] query [SEP] title [SEP].
- Masked patch modelling: `patch_mask_ratio` of each row's patches zeroed; a
  linear head predicts the (detached) original feature; KL or MSE.
- Alignment negatives (the released FashionBERT data: this product's image
  with the TEXT of another product of the same subcategory): a fraction
  `negative_fraction` of the rows get a foreign text, drawn from a per-
  subcategory bank of texts seen in earlier training batches (so the whole
  training set, not only the batch, supplies negatives); when the bank has
  no other product of the row's subcategory, from the batch (same
  subcategory, else any other product). MLM / MPM use matched rows only.
- Adaptive loss weights: w = argmin over the simplex of
  1/2 ||sum_i w_i g_i||^2 + (alpha*K/2) ||w - 1/K||^2, g_i = the gradient of
  task i's loss w.r.t. shared weights (`grad_source`: last_layer,
  sequence_output or shared), solved exactly over active sets; the weights
  are constants of the step (no gradient through them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.cots import random_patch_mask  # the one MPM/CMVM patch draw
from mmf_fashion.modules.encoders import build_text_encoder
from mmf_fashion.modules.fashionbert_patches import (  # noqa: F401  (re-exported)
    PatchFeatureCache,
    PatchFeatureEncoder,
    fit_to_grid,
    merge_patches,
    precompute_patch_features,
    split_into_patches,
)
from mmf_fashion.modules.fashionbert_tasks import (  # noqa: F401  (re-exported)
    IGNORE_INDEX,
    MPM_LOSSES,
    SubcategoryTextBank,
    _zero_loss,
    adaptive_loss_weights,
    choose_negative_rows,
    combine_losses,
    masked_patch_loss,
    pair_with_negative_texts,
    query_title_inputs,
    sample_alignment_negatives,
    simplex_min_quadratic,
    task_gradient_gram,
)

TASKS = ("mlm", "mpm", "alignment")
SEGMENTS = ("text_image", "query_title_image")
WEIGHTINGS = ("adaptive", "fixed")
# what the task gradients of the adaptive weights are taken with respect to
GRAD_SOURCES = ("last_layer", "sequence_output", "shared")


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
    negative_bank_size: int = 8  # texts kept per subcategory (0 = in-batch negatives only)
    loss_weighting: str = "adaptive"
    grad_source: str = "last_layer"
    adaptive_alpha: float = 1.0
    normalize_gradients: bool = True  # Gram / its mean diagonal: alpha is scale-free
    adaptive_every: int = 1  # recompute the weights every n training steps
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
        if self.negative_bank_size < 0:
            raise ValueError(f"fashionbert negative_bank_size must be >= 0, got {self.negative_bank_size}")
        if self.loss_weighting not in WEIGHTINGS:
            raise ValueError(f"fashionbert loss_weighting '{self.loss_weighting}': choose one of {list(WEIGHTINGS)}")
        if self.grad_source not in GRAD_SOURCES:
            raise ValueError(
                f"fashionbert loss_weighting.adaptive.grad_source '{self.grad_source}': "
                f"choose one of {list(GRAD_SOURCES)}"
            )
        if self.adaptive_alpha < 0 or self.adaptive_every < 1:
            raise ValueError(
                f"fashionbert adaptive alpha must be >= 0 and every >= 1, got "
                f"alpha={self.adaptive_alpha}, every={self.adaptive_every}"
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

    def __init__(
        self, feature_dim: int, hidden_size: int, num_patches: int, dropout: float = 0.1, layer_norm_eps: float = 1e-12
    ):
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
            raise ValueError(
                f"fashionbert: {num} patches, the model was built for {self.position_embeddings.num_embeddings}"
            )
        tokens = self.projection(patch_features) + self.position_embeddings.weight + self.segment_embedding.weight
        return self.dropout(self.layer_norm(tokens))


class MaskedTokenHead(nn.Module):
    """BERT's MLM head: dense-GELU-LayerNorm, then the (tied) word embeddings."""

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ word_embeddings.t() + self.bias


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
            options.image_encoder,
            options.grid_size,
            options.patch_size,
            pretrained=options.image_pretrained,
            freeze=options.freeze_image_encoder,
            chunk_size=options.patch_chunk_size,
        )
        self.text_encoder = build_text_encoder({**dict(options.text_encoder), "add_pooling_layer": True})
        bert_config = self.text_encoder.config
        hidden = bert_config.hidden_size
        feature_dim = self.image_encoder.out_channels
        self.image_projection = PatchEmbedding(
            feature_dim,
            hidden,
            options.num_patches,
            dropout=bert_config.hidden_dropout_prob,
            layer_norm_eps=bert_config.layer_norm_eps,
        )
        if "mlm" in options.heads:
            self.mlm_head = MaskedTokenHead(hidden, bert_config.vocab_size, bert_config.layer_norm_eps)
        if "mpm" in options.heads:
            self.mpm_head = nn.Linear(hidden, feature_dim)
        if "alignment" in options.heads:
            self.alignment_head = nn.Linear(hidden, 2)
        if "classification" in options.heads:
            if options.num_labels < 1:
                raise ValueError("fashionbert classification head: set num_labels (e.g. 121 subcategories)")
            self.classification_head = nn.Sequential(
                nn.Dropout(bert_config.hidden_dropout_prob), nn.Linear(hidden, options.num_labels)
            )
        # plain attributes (no state): the bank refills from the data after a resume
        self.negative_bank = SubcategoryTextBank(options.negative_bank_size) if options.negative_bank_size else None
        self.__dict__["_adaptive_state"] = {"step": 0, "weights": None}
        self.patch_cache = None
        if options.patch_cache_file:
            signature = {
                "encoder": options.image_encoder,
                "weights": options.image_pretrained,
                "grid_size": options.grid_size,
                "patch_size": options.patch_size,
            }
            self.patch_cache = PatchFeatureCache(options.patch_cache_file, signature, options.patch_cache_flush_every)

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

    def fuse(
        self,
        patch_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
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
        extended = create_bidirectional_mask(config=self.text_encoder.config, inputs_embeds=tokens, attention_mask=mask)
        sequence = self.text_encoder.encoder(tokens, attention_mask=extended).last_hidden_state
        return sequence, self.text_encoder.pooler(sequence)

    # --------------------------------------------------------------- tasks
    def alignment_logits(
        self,
        patch_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(B, N, C) patch features and (B, L) text of each pair -> (B, 2) logits, class 1 = matched."""
        _, pooled = self.fuse(patch_features, input_ids, attention_mask, token_type_ids)
        return self.alignment_head(pooled)

    def score_pairs(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        image_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Pair scores (P,) = logit(matched) - logit(not matched) for P image/text pairs
        (images (P, 3, H, W), texts (P, L)); higher = better match."""
        logits = self.alignment_logits(
            self.encode_patches(images, image_ids), input_ids, attention_mask, token_type_ids
        )
        return logits[:, 1] - logits[:, 0]

    def classification_logits(
        self,
        patch_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(B, N, C) patches + (B, L) text -> (B, num_labels) logits from the pooled [CLS]."""
        _, pooled = self.fuse(patch_features, input_ids, attention_mask, token_type_ids)
        return self.classification_head(pooled)

    def _pair_texts(self, input_ids, attention_mask, token_type_ids, product_id, subcategory_id, generator):
        """Texts as paired (negatives swapped in); the bank is read and then filled in training only,
        so it holds earlier batches and evaluation depends on the batch alone."""
        bank = self.negative_bank if self.training else None
        pad_id = getattr(self.text_encoder.config, "pad_token_id", None) or 0
        pairs = pair_with_negative_texts(
            input_ids,
            attention_mask,
            token_type_ids,
            product_id,
            subcategory_id,
            self.options.negative_fraction,
            bank,
            generator,
            pad_id,
        )
        if bank is not None and subcategory_id is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            bank.add(product_id.reshape(-1), subcategory_id.reshape(-1), input_ids, attention_mask, types)
        return pairs

    def alignment_loss(
        self,
        patch_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        product_id: torch.Tensor,
        subcategory_id: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """Matched / not-matched cross entropy; negatives = the text of another product
        of the same subcategory (bank, else batch; see pair_with_negative_texts).

        Returns {"loss", "logits" (B, 2), "labels" (B,), "text_product" (B,), "negative_source" (B,)}.
        """
        pairs = self._pair_texts(input_ids, attention_mask, token_type_ids, product_id, subcategory_id, generator)
        logits = self.alignment_logits(
            patch_features, pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"]
        )
        labels = (~pairs["negative"]).long()
        return {
            "loss": F.cross_entropy(logits, labels),
            "logits": logits,
            "labels": labels,
            "text_product": pairs["text_product"],
            "negative_source": pairs["source"],
        }

    def _shared_inputs(self, sequence: torch.Tensor) -> List[torch.Tensor]:
        """What the adaptive weights differentiate each task loss with respect to."""
        source = self.options.grad_source
        if source == "sequence_output":  # MGDA-UB's stand-in: the shared representation
            return [sequence]
        if source == "last_layer":  # GradNorm's stand-in: the last shared layer's weights
            modules = [self.text_encoder.encoder.layer[-1]]
        else:  # exact: every weight the tasks share (one full extra backward per task)
            modules = [self.text_encoder, self.image_projection, self.image_encoder]
        params = [p for module in modules for p in module.parameters() if p.requires_grad]
        return params or [sequence]  # frozen layer: fall back to its output

    def loss_weights(self, losses: Mapping[str, torch.Tensor], sequence: torch.Tensor) -> Dict[str, float]:
        """{task: weight}: fixed ones, or the adaptive solution on training steps with a
        graph (recomputed every `adaptive_every` of them, reused in between). Without a
        graph (evaluation) adaptive weights are uniform, 1/K: validation losses then
        depend on the weights of the model only, not on its training history."""
        options, names = self.options, list(losses)
        if options.loss_weighting == "fixed":
            return {name: float(options.fixed_weights.get(name, 1.0)) for name in names}
        trainable = self.training and torch.is_grad_enabled() and any(loss.requires_grad for loss in losses.values())
        if not trainable:
            return {name: 1.0 / len(names) for name in names}
        state = self.__dict__.setdefault("_adaptive_state", {"step": 0, "weights": None})
        stale = state["weights"] is None or set(state["weights"]) != set(names)
        if stale or state["step"] % options.adaptive_every == 0:
            gram = task_gradient_gram([losses[name] for name in names], self._shared_inputs(sequence))
            weights = adaptive_loss_weights(gram, options.adaptive_alpha, options.normalize_gradients)
            state["weights"] = dict(zip(names, weights.tolist()))
            state["grad_norms"] = dict(zip(names, gram.diagonal().clamp_min(0).sqrt().tolist()))
        state["step"] += 1
        return dict(state["weights"])

    def pretraining_losses(
        self,
        patch_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_labels: Optional[torch.Tensor],
        product_id: torch.Tensor,
        subcategory_id: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, Any]:
        """MLM + masked patch modelling + alignment in one forward, weighted.

        patch_features (B, N, C) of each row's own image; input_ids (B, L) the
        (masked) text; mlm_labels (B, L) with -100 where nothing is predicted
        (needed when "mlm" is a task); product_id, subcategory_id (B,).
        Returns {"loss": weighted sum, "losses": {task: unweighted},
        "weights": {task: weight}, "alignment_logits" (B, 2),
        "alignment_labels" (B,), "patch_mask" (B, N) bool, "text_product" (B,),
        "negative_source" (B,)}.
        """
        options = self.options
        batch, num_patches = patch_features.shape[:2]
        if "alignment" in options.tasks:
            pairs = self._pair_texts(input_ids, attention_mask, token_type_ids, product_id, subcategory_id, generator)
        else:  # no alignment task: no reason to swap texts
            pairs = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
                "negative": torch.zeros(batch, dtype=torch.bool, device=patch_features.device),
                "text_product": product_id.reshape(-1),
                "source": torch.zeros_like(product_id.reshape(-1)),
            }
        matched = ~pairs["negative"]
        patch_mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=patch_features.device)
        if "mpm" in options.tasks:
            patch_mask = random_patch_mask(
                batch, num_patches, options.patch_mask_ratio, generator, patch_features.device
            )
        model_input = patch_features.masked_fill(patch_mask.unsqueeze(-1), 0.0)
        sequence, pooled = self.fuse(model_input, pairs["input_ids"], pairs["attention_mask"], pairs["token_type_ids"])
        text_hidden, patch_hidden = sequence[:, : input_ids.shape[1]], sequence[:, input_ids.shape[1] :]
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
            losses["mpm"] = masked_patch_loss(prediction, patch_features[selected], options.mpm_loss)
        alignment_labels = matched.long()
        alignment_logits = self.alignment_head(pooled) if "alignment" in options.heads else None
        if "alignment" in options.tasks:
            losses["alignment"] = F.cross_entropy(alignment_logits, alignment_labels)
        total, weights = combine_losses(losses, self.loss_weights(losses, sequence))
        return {
            "loss": total,
            "losses": losses,
            "weights": weights,
            "alignment_logits": alignment_logits,
            "alignment_labels": alignment_labels,
            "patch_mask": patch_mask,
            "text_product": pairs["text_product"],
            "negative_source": pairs["source"],
        }

    # ------------------------------------------------------ batch level
    def text_inputs(self, batch: Mapping[str, Any], masked: bool):
        """(input_ids, attention_mask, token_type_ids, mlm_labels) of the batch, (B, L) each
        (with segments query_title_image: [CLS] query [SEP] title [SEP])."""
        if masked:
            missing = [key for key in ("masked_input_ids", "mlm_labels") if batch.get(key, None) is None]
            if missing:
                raise KeyError(
                    f"fashionbert pretraining with the mlm task needs sample keys {missing}: turn on "
                    "the dataset's mlm option, or drop mlm from pretraining.tasks"
                )
            input_ids, labels = batch["masked_input_ids"], batch["mlm_labels"]
        else:
            input_ids, labels = batch["input_ids"], None
        attention_mask = batch["attention_mask"]
        token_type_ids = batch.get("token_type_ids", None)
        if self.options.segments == "query_title_image":
            query_ids = batch.get("query_input_ids", None)
            query_mask = batch.get("query_attention_mask", None)
            if query_ids is None or query_mask is None:
                raise KeyError(
                    "fashionbert segments=query_title_image needs sample keys query_input_ids and "
                    "query_attention_mask (the query) beside input_ids (the title)"
                )
            input_ids, attention_mask, token_type_ids, labels = query_title_inputs(
                query_ids, query_mask, input_ids, attention_mask, labels
            )
        return input_ids, attention_mask, token_type_ids, labels

    def batch_patches(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.encode_patches(batch["image"], batch.get("image_id", None))

    def run(self, batch: Mapping[str, Any], head: str) -> Dict[str, Any]:
        """One forward of a head (pretraining | alignment | classification) on a batch
        (docs of the MMF model for the keys); "losses" are named by task."""
        if head == "pretraining":
            return self.run_pretraining(batch)
        if head == "alignment":
            return self.run_alignment(batch)
        return self.run_classification(batch)

    def run_pretraining(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """{"losses": the WEIGHTED task losses, "unweighted_losses", "loss_weights",
        "negative_source"[, "scores": alignment logits]}."""
        input_ids, attention_mask, token_type_ids, labels = self.text_inputs(batch, masked="mlm" in self.options.tasks)
        result = self.pretraining_losses(
            self.batch_patches(batch),
            input_ids,
            attention_mask,
            labels,
            batch["product_id"],
            batch.get("subcategory_id", None),
            token_type_ids,
        )
        output = {
            "losses": {task: result["weights"][task] * loss for task, loss in result["losses"].items()},
            "unweighted_losses": {task: loss.detach() for task, loss in result["losses"].items()},
            "loss_weights": {task: weight.detach() for task, weight in result["weights"].items()},
            "negative_source": result["negative_source"],
        }
        if result["alignment_logits"] is not None:
            output["scores"] = result["alignment_logits"]
        return output

    def run_alignment(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        input_ids, attention_mask, token_type_ids, _ = self.text_inputs(batch, masked=False)
        result = self.alignment_loss(
            self.batch_patches(batch),
            input_ids,
            attention_mask,
            batch["product_id"],
            batch.get("subcategory_id", None),
            token_type_ids,
        )
        return {
            "losses": {"alignment": result["loss"]},
            "scores": result["logits"],
            "alignment_labels": result["labels"],
            "negative_source": result["negative_source"],
        }

    def run_classification(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        input_ids, attention_mask, token_type_ids, _ = self.text_inputs(batch, masked=False)
        scores = self.classification_logits(self.batch_patches(batch), input_ids, attention_mask, token_type_ids)
        output: Dict[str, Any] = {"scores": scores, "losses": {}}
        targets = batch.get("targets", None)
        if targets is not None:
            if int(targets.max()) >= scores.shape[1] or int(targets.min()) < 0:
                raise ValueError(
                    f"fashionbert classification: targets reach {int(targets.max())} but "
                    f"num_labels is {scores.shape[1]}; set model_config.fashionbert.num_labels"
                )
            output["losses"]["classification"] = F.cross_entropy(scores, targets.long())
        return output

    def match_scores(
        self, pairs, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Alignment score (P,) of P image/text pairs, higher = better match.

        `pairs`: a mapping / SampleList with image (P, 3, H, W), input_ids,
        attention_mask [, token_type_ids, image_id, query_input_ids,
        query_attention_mask] (P, L) (the rerank.py interface), or the images
        themselves with input_ids and attention_mask given as arguments.
        Leaves the model's train/eval mode as it is.
        """
        if isinstance(pairs, torch.Tensor):
            pairs = {"image": pairs, "input_ids": input_ids, "attention_mask": attention_mask}
        text_ids, text_mask, token_types, _ = self.text_inputs(pairs, masked=False)
        return self.score_pairs(pairs["image"], text_ids, text_mask, token_types, pairs.get("image_id", None))


class FashionBert(FashionBertMixin, nn.Module):
    """The plain torch FashionBERT (no MMF): `FashionBert(FashionBertOptions(...))`."""

    def __init__(self, options: Optional[FashionBertOptions] = None):
        super().__init__()
        self.build_network(options or FashionBertOptions())

    def forward(self, batch: Mapping[str, Any], head: str = "pretraining") -> Dict[str, Any]:
        return self.run(batch, head)
