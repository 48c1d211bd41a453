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
from itertools import combinations
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.cots import random_patch_mask  # the one MPM/CMVM patch draw
from mmf_fashion.modules.encoders import build_text_encoder
from mmf_fashion.modules.fashionbert_patches import (  # noqa: F401  (re-exported)
    PatchFeatureCache, PatchFeatureEncoder, fit_to_grid, merge_patches, precompute_patch_features,
    split_into_patches)

TASKS = ("mlm", "mpm", "alignment")
SEGMENTS = ("text_image", "query_title_image")
MPM_LOSSES = ("kl", "mse")
WEIGHTINGS = ("adaptive", "fixed")
# what the task gradients of the adaptive weights are taken with respect to
GRAD_SOURCES = ("last_layer", "sequence_output", "shared")
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
            raise ValueError(f"fashionbert loss_weighting.adaptive.grad_source '{self.grad_source}': "
                             f"choose one of {list(GRAD_SOURCES)}")
        if self.adaptive_alpha < 0 or self.adaptive_every < 1:
            raise ValueError(f"fashionbert adaptive alpha must be >= 0 and every >= 1, got "
                             f"alpha={self.adaptive_alpha}, every={self.adaptive_every}")
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
    """For each row, the batch row that supplies its negative, or -1.

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


def simplex_min_quadratic(matrix: torch.Tensor) -> torch.Tensor:
    """argmin of w^T M w over the simplex (sum w = 1, w >= 0) for a symmetric PSD (K, K) M.

    Exact: at the optimum, with support S, the KKT conditions give
    w_S proportional to M_SS^-1 1; every support is tried (2^K - 1 small
    solves, K <= 3 here) and the feasible candidate of least value kept.
    """
    num = matrix.shape[0]
    m = matrix.double()
    # a tiny ridge keeps M_SS invertible when gradients are parallel (alpha = 0)
    m = m + 1e-10 * max(float(m.diagonal().abs().max()), 1.0) * torch.eye(num, dtype=m.dtype, device=m.device)
    best, best_value = None, float("inf")
    for size in range(1, num + 1):
        for support in combinations(range(num), size):
            index = torch.tensor(support, device=m.device)
            direction = torch.linalg.solve(m[index][:, index], torch.ones(size, dtype=m.dtype, device=m.device))
            if float(direction.sum()) <= 0 or bool((direction < -1e-12 * direction.abs().max()).any()):
                continue
            weights = torch.zeros(num, dtype=m.dtype, device=m.device)
            weights[index] = direction.clamp_min(0.0)
            weights = weights / weights.sum()
            value = float(weights @ m @ weights)
            if value < best_value:
                best, best_value = weights, value
    return best


def adaptive_loss_weights(gram: torch.Tensor, alpha: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """FashionBERT's adaptive weights from the (K, K) Gram matrix of the task gradients.

    w = argmin over the simplex of 1/2 ||sum_i w_i g_i||^2 + (alpha*K/2) ||w - 1/K||^2.
    On the simplex ||w - 1/K||^2 = ||w||^2 - 1/K, so this is min w^T (G + alpha*K*I) w.
    normalize divides G by its mean diagonal first (alpha then means the same at any
    gradient scale). With orthogonal gradients: w_i ~ 1 / (||g_i||^2 + alpha*K).
    """
    num = gram.shape[0]
    if num == 1:
        return torch.ones(1, device=gram.device)
    g = gram.detach().double().cpu()  # K x K: one copy, then the small solves run on the CPU
    if not bool(torch.isfinite(g).all()):  # a non-finite gradient: the trainer reports the loss itself
        return torch.full((num,), 1.0 / num, device=gram.device)
    g = (g + g.t()) / 2
    scale = float(g.diagonal().mean())
    if normalize and scale > 0:
        g = g / scale
    eye = torch.eye(num, dtype=g.dtype, device=g.device)
    return simplex_min_quadratic(g + alpha * num * eye).float().to(gram.device)


def task_gradient_gram(losses: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K, K) Gram matrix of the K losses' gradients w.r.t. `inputs` (shared
    parameters or activations); one extra backward per loss, graph kept."""
    rows = []
    for loss in losses:
        if not loss.requires_grad:
            rows.append(torch.cat([torch.zeros(x.numel(), device=x.device) for x in inputs]))
            continue
        grads = torch.autograd.grad(loss.float(), list(inputs), retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(x)).reshape(-1).float()
                               for g, x in zip(grads, inputs)]))
    flat = torch.stack(rows)
    return flat @ flat.t()


def combine_losses(losses: Mapping[str, torch.Tensor], weights: Mapping[str, Any]
                   ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """sum_i w_i L_i of named losses -> (total, {name: weight tensor}); weights are constants."""
    names = list(losses)
    stacked = torch.stack([losses[name].float().reshape(()) for name in names])
    values = stacked.new_tensor([float(weights[name]) for name in names])
    return (values * stacked).sum(), {name: values[i] for i, name in enumerate(names)}


class SubcategoryTextBank:
    """Texts of recent training products, per subcategory: same-subcategory
    negatives from across the training set, not just the batch.

    Holds at most `size` products per subcategory (the newest; one entry per
    product). Not saved in checkpoints: it refills within a few batches.
    """

    def __init__(self, size: int = 8):
        self.size = int(size)
        self.entries: Dict[int, List[Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.entries.values())

    def add(self, product_id: torch.Tensor, subcategory_id: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> None:
        for row, (product, subcategory) in enumerate(zip(product_id.tolist(), subcategory_id.tolist())):
            if subcategory < 0:  # unlabelled product: no subcategory to match
                continue
            bucket = [entry for entry in self.entries.get(subcategory, []) if entry[0] != product]
            bucket.append((product, input_ids[row].detach().clone(), attention_mask[row].detach().clone(),
                           token_type_ids[row].detach().clone()))
            self.entries[subcategory] = bucket[-self.size:]

    def candidates(self, subcategory: int, product: int):
        """Entries (product, ids, mask, types) of the subcategory, other products only."""
        return [entry for entry in self.entries.get(subcategory, []) if entry[0] != product]


def _fit_length(entry: Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor], length: int, pad_id: int):
    """A bank entry's (ids, mask, types) cut or padded to the batch's text length."""
    _, ids, mask, types = entry
    if ids.numel() >= length:
        return ids[:length], mask[:length], types[:length]
    pad = length - ids.numel()
    return (F.pad(ids, (0, pad), value=pad_id), F.pad(mask, (0, pad)), F.pad(types, (0, pad)))


def pair_with_negative_texts(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             token_type_ids: Optional[torch.Tensor], product_id: torch.Tensor,
                             subcategory_id: Optional[torch.Tensor], fraction: float,
                             bank: Optional[SubcategoryTextBank] = None,
                             generator: Optional[torch.Generator] = None, pad_id: int = 0
                             ) -> Dict[str, torch.Tensor]:
    """Give round(fraction*B) rows (never all) the text of another product.

    Source per negative row: a random bank entry of the row's subcategory (another
    product, earlier batch); else a batch row (sample_alignment_negatives: same
    subcategory, else any other product). Rows with no candidate stay matched.
    Returns input_ids, attention_mask, token_type_ids (B, L) as paired, negative (B,)
    bool, text_product (B,) the product each text belongs to, source (B,)
    0 = own text, 1 = bank, 2 = batch.
    """
    batch, length = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    product_id = product_id.reshape(-1)
    partner = sample_alignment_negatives(product_id, subcategory_id, generator)
    from_bank: List[Optional[tuple]] = [None] * batch
    if bank is not None and subcategory_id is not None:
        for row, (product, subcategory) in enumerate(zip(product_id.tolist(), subcategory_id.reshape(-1).tolist())):
            options = bank.candidates(subcategory, product)
            if options:
                from_bank[row] = options[int(torch.randint(len(options), (1,), generator=generator))]
    has_bank = torch.tensor([entry is not None for entry in from_bank], device=partner.device)
    negative = choose_negative_rows(torch.where(has_bank, torch.zeros_like(partner), partner), fraction, generator)
    ids, mask, types = input_ids.clone(), attention_mask.clone(), token_type_ids.clone()
    text_product, source = product_id.clone(), torch.zeros_like(product_id)
    for row in negative.nonzero().flatten().tolist():
        if from_bank[row] is not None:
            fitted = _fit_length(from_bank[row], length, pad_id)
            ids[row], mask[row], types[row] = (x.to(ids.device) for x in fitted)
            text_product[row], source[row] = from_bank[row][0], 1
        else:
            other = int(partner[row])
            ids[row], mask[row], types[row] = input_ids[other], attention_mask[other], token_type_ids[other]
            text_product[row], source[row] = product_id[other], 2
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "negative": negative,
            "text_product": text_product, "source": source}


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
        # plain attributes (no state): the bank refills from the data after a resume
        self.negative_bank = SubcategoryTextBank(options.negative_bank_size) if options.negative_bank_size else None
        self.__dict__["_adaptive_state"] = {"step": 0, "weights": None}
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

    def _pair_texts(self, input_ids, attention_mask, token_type_ids, product_id, subcategory_id, generator):
        """Texts as paired (negatives swapped in); the bank is read and then filled in training only,
        so it holds earlier batches and evaluation depends on the batch alone."""
        bank = self.negative_bank if self.training else None
        pad_id = getattr(self.text_encoder.config, "pad_token_id", None) or 0
        pairs = pair_with_negative_texts(input_ids, attention_mask, token_type_ids, product_id, subcategory_id,
                                         self.options.negative_fraction, bank, generator, pad_id)
        if bank is not None and subcategory_id is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            bank.add(product_id.reshape(-1), subcategory_id.reshape(-1), input_ids, attention_mask, types)
        return pairs

    def alignment_loss(self, patch_features: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, product_id: torch.Tensor,
                       subcategory_id: Optional[torch.Tensor] = None,
                       token_type_ids: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Matched / not-matched cross entropy; negatives = the text of another product
        of the same subcategory (bank, else batch; see pair_with_negative_texts).

        Returns {"loss", "logits" (B, 2), "labels" (B,), "text_product" (B,), "negative_source" (B,)}.
        """
        pairs = self._pair_texts(input_ids, attention_mask, token_type_ids, product_id, subcategory_id, generator)
        logits = self.alignment_logits(patch_features, pairs["input_ids"], pairs["attention_mask"],
                                       pairs["token_type_ids"])
        labels = (~pairs["negative"]).long()
        return {"loss": F.cross_entropy(logits, labels), "logits": logits, "labels": labels,
                "text_product": pairs["text_product"], "negative_source": pairs["source"]}

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
        trainable = self.training and torch.is_grad_enabled() and any(l.requires_grad for l in losses.values())
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
        "alignment_labels" (B,), "patch_mask" (B, N) bool, "text_product" (B,),
        "negative_source" (B,)}.
        """
        options = self.options
        batch, num_patches = patch_features.shape[:2]
        if "alignment" in options.tasks:
            pairs = self._pair_texts(input_ids, attention_mask, token_type_ids, product_id, subcategory_id,
                                     generator)
        else:  # no alignment task: no reason to swap texts
            pairs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                     "negative": torch.zeros(batch, dtype=torch.bool, device=patch_features.device),
                     "text_product": product_id.reshape(-1), "source": torch.zeros_like(product_id.reshape(-1))}
        matched = ~pairs["negative"]
        patch_mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=patch_features.device)
        if "mpm" in options.tasks:
            patch_mask = random_patch_mask(batch, num_patches, options.patch_mask_ratio, generator,
                                           patch_features.device)
        model_input = patch_features.masked_fill(patch_mask.unsqueeze(-1), 0.0)
        sequence, pooled = self.fuse(model_input, pairs["input_ids"], pairs["attention_mask"],
                                     pairs["token_type_ids"])
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
            losses["mpm"] = masked_patch_loss(prediction, patch_features[selected], options.mpm_loss)
        alignment_labels = matched.long()
        alignment_logits = self.alignment_head(pooled) if "alignment" in options.heads else None
        if "alignment" in options.tasks:
            losses["alignment"] = F.cross_entropy(alignment_logits, alignment_labels)
        total, weights = combine_losses(losses, self.loss_weights(losses, sequence))
        return {"loss": total, "losses": losses, "weights": weights, "alignment_logits": alignment_logits,
                "alignment_labels": alignment_labels, "patch_mask": patch_mask,
                "text_product": pairs["text_product"], "negative_source": pairs["source"]}


class FashionBert(FashionBertMixin, nn.Module):
    """The plain torch FashionBERT (no MMF): `FashionBert(FashionBertOptions(...))`."""

    def __init__(self, options: Optional[FashionBertOptions] = None):
        super().__init__()
        self.build_network(options or FashionBertOptions())
