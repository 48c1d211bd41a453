"""COTS building blocks (CVPR 2022, arXiv 2204.07441). Plain torch, no MMF.

Cheatsheet::

    from mmf_fashion.modules import cots
    cots.ema_update(online_modules, momentum_modules, momentum=0.995)
    queue = cots.FifoQueue(4096, {"image": 256, "text": 256})
    queue.enqueue(image=img_m, text=txt_m)          # gathered from every rank
    old_images, old_texts = queue.ordered("image", "text")   # oldest first
    amf = cots.MomentumFilter(size=2048, k=1.5, min_count=256)
    keep = amf.keep_mask(positive_similarity)       # (B,) bool, uses past batches only
    amf.update(positive_similarity)                 # every pair enters the history
    logits_i2t, labels = cots.queue_logits(img, txt_m, queue.valid("text"), scale)
    loss = cots.masked_cross_entropy(logits_i2t, labels, keep)
    kl = cots.symmetric_kl(logits_i2t, logits_t2i, keep)
    head = cots.CrossModalTokenHead(token_dim=128, other_dim=256, num_classes=30522)   # fusion="add"
    cmlm = cots.masked_token_loss(head, text_hidden, image_embedding, mlm_labels, keep)
    vit = cots.MaskedPatchViT(image_size=64, patch_size=16)   # 4x4 patches
    hidden = vit(images, patch_mask)                # (B, 1 + 16, C); masked patches = mask token

The three levels of the paper:
- instance: InfoNCE of the online features against the momentum features of
  the batch (all ranks) followed by the queue of older momentum features;
- token: ``CrossModalTokenHead`` + ``masked_token_loss`` for CMLM (masked
  words from the text tokens with the paired image's global feature ADDED to
  each) and CMVM (VQ codes of the masked patches from the patch features of
  the masked image with the paired text's global feature added); the streams
  never attend to each other. ``MaskedPatchViT`` is the paper's image tower:
  masked patches become a learned mask token before the transformer (the CNN
  tower masks pixels instead: ``mask_image_patches``);
- task: ``symmetric_kl`` between the i2t and t2i distributions over the
  queue. Entry j of the image and of the text queue is the same pair (they
  share one pointer), so the two distributions live on the same index set.
``MomentumFilter`` is the adaptive momentum filter (AMF): pairs whose
positive similarity is below mu - k * sigma of recent positives leave the
loss; every pair still enters the queues.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.distributed import all_gather_nograd, all_gather_variable, get_rank, get_world_size

IGNORE_INDEX = -100


# ----------------------------------------------------------------- momentum
@torch.no_grad()
def ema_update(online: Iterable[nn.Module], momentum: Iterable[nn.Module], momentum_value: float) -> None:
    """momentum_param = m * momentum_param + (1 - m) * online_param, module by module.

    Floating-point buffers (BatchNorm statistics) follow the same rule;
    integer buffers (num_batches_tracked) are copied.
    """
    m = float(momentum_value)
    for online_module, momentum_module in zip(online, momentum):
        online_params = list(online_module.parameters())
        momentum_params = list(momentum_module.parameters())
        if len(online_params) != len(momentum_params):
            raise ValueError("ema_update: online and momentum modules differ in structure")
        for param_o, param_m in zip(online_params, momentum_params):
            param_m.data.mul_(m).add_(param_o.data, alpha=1.0 - m)
        for buffer_o, buffer_m in zip(online_module.buffers(), momentum_module.buffers()):
            if buffer_m.is_floating_point():
                buffer_m.mul_(m).add_(buffer_o, alpha=1.0 - m)
            else:
                buffer_m.copy_(buffer_o)


# ------------------------------------------------------------------- queues
class FifoQueue(nn.Module):
    """A ring buffer of aligned rows: one (size, dim) buffer per field.

    All fields share ``pointer`` (next row to overwrite) and ``count``
    (rows filled so far); everything is a registered buffer, so the state
    dict restores the queue exactly. ``enqueue`` gathers the rows of every
    rank first (rank 0's rows first), so the queue is identical on all ranks.
    """

    def __init__(self, size: int, fields: Mapping[str, Union[int, Tuple[int, torch.dtype]]]):
        super().__init__()
        if int(size) <= 0:
            raise ValueError(f"FifoQueue size must be positive, got {size}")
        self.size = int(size)
        self.fields = tuple(fields)
        for name, spec in fields.items():  # dim, or (dim, dtype) e.g. ids kept exactly as int64
            dim, dtype = spec if isinstance(spec, tuple) else (spec, torch.float32)
            self.register_buffer(name, torch.zeros(self.size, int(dim), dtype=dtype))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, gather: bool = True, **rows: torch.Tensor) -> None:
        """Push (n, dim) rows per field (the same n for every field); oldest rows are overwritten."""
        if set(rows) != set(self.fields):
            raise ValueError(f"enqueue needs exactly the fields {self.fields}, got {sorted(rows)}")
        rows = {
            name: (all_gather_variable(value.detach()) if gather else value.detach()) for name, value in rows.items()
        }
        sizes = {value.shape[0] for value in rows.values()}
        if len(sizes) != 1:
            raise ValueError(f"enqueue: fields have different numbers of rows {sizes}")
        n = sizes.pop()
        if n == 0:
            return
        if n > self.size:  # only the newest `size` rows can stay
            rows = {name: value[-self.size :] for name, value in rows.items()}
            n = self.size
        positions = (torch.arange(n, device=self.pointer.device) + self.pointer) % self.size
        for name, value in rows.items():
            buffer = getattr(self, name)
            buffer[positions] = value.reshape(n, -1).to(buffer.dtype)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def valid(self, name: str) -> torch.Tensor:
        """The filled rows of a field (storage order; aligned across fields)."""
        return getattr(self, name)[: int(self.count)]

    def ordered(self, *names: str) -> Tuple[torch.Tensor, ...]:
        """The filled rows of the fields, oldest first (the order they will be dequeued)."""
        count = int(self.count)
        if count < self.size:
            order = torch.arange(count, device=self.pointer.device)
        else:
            order = (torch.arange(self.size, device=self.pointer.device) + self.pointer) % self.size
        return tuple(getattr(self, name)[order] for name in names)


class MomentumFilter(nn.Module):
    """Adaptive momentum filter: drop pairs whose positive similarity is an outlier.

    The history is a FifoQueue of recent positive-pair similarities (all
    ranks). threshold = mean - k * std of the history; until ``min_count``
    values have been seen the threshold is -inf (nothing is dropped).
    """

    def __init__(self, size: int = 2048, k: float = 1.5, min_count: int = 256):
        super().__init__()
        self.history = FifoQueue(size, {"similarity": 1})
        self.k = float(k)
        self.min_count = int(min_count)

    def threshold(self) -> torch.Tensor:
        values = self.history.valid("similarity").flatten()
        if values.numel() < max(self.min_count, 2):
            return torch.tensor(-math.inf, device=values.device)
        return values.mean() - self.k * values.std(unbiased=False)

    @torch.no_grad()
    def keep_mask(self, similarity: torch.Tensor) -> torch.Tensor:
        """similarity (B,) -> bool (B,): True for the pairs that stay in the loss."""
        return similarity >= self.threshold().to(similarity.dtype)

    @torch.no_grad()
    def update(self, similarity: torch.Tensor, gather: bool = True) -> None:
        self.history.enqueue(gather=gather, similarity=similarity.detach().reshape(-1, 1))


# ------------------------------------------------------------------- losses
MASKED_LOGIT = -1.0e4  # finite: the KL of two equally masked rows stays 0, not nan


def queue_logits(
    query: torch.Tensor,
    batch_keys: torch.Tensor,
    queue_keys: Optional[torch.Tensor],
    scale: torch.Tensor,
    query_ids: Optional[torch.Tensor] = None,
    queue_ids: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits of each query against [momentum keys of the global batch ; queue].

    query (B, D) online features of this rank; batch_keys (B, D) the momentum
    features of the same pairs (gathered over ranks here, no grad);
    queue_keys (Nq, D) or None. Returns logits (B, world*B + Nq) and labels
    (B,) = the column of each query's own momentum key.
    query_ids (B,) / queue_ids (Nq,): product ids; a key of the SAME product
    other than the query's own (another view, or the product's older entry
    in the queue, which a queue larger than an epoch always holds) is no
    negative: its logit is set to MASKED_LOGIT.
    """
    keys = all_gather_nograd(batch_keys.detach())
    num_batch_keys = keys.shape[0]
    if queue_keys is not None and queue_keys.shape[0] > 0:
        keys = torch.cat([keys, queue_keys.detach().to(keys.dtype)], dim=0)
    logits = scale * query @ keys.t()
    labels = torch.arange(query.shape[0], device=query.device) + get_rank() * query.shape[0]
    if query_ids is not None:
        key_ids = all_gather_nograd(query_ids.reshape(-1).long())
        if keys.shape[0] > num_batch_keys:
            if queue_ids is None or queue_ids.shape[0] != keys.shape[0] - num_batch_keys:
                raise ValueError("queue_logits: queue_ids must give one id per queue entry")
            key_ids = torch.cat([key_ids, queue_ids.reshape(-1).long()])
        same_product = key_ids.unsqueeze(0) == query_ids.reshape(-1, 1).long()
        same_product[torch.arange(query.shape[0], device=query.device), labels] = False
        logits = logits.masked_fill(same_product, MASKED_LOGIT)
    return logits, labels


def _zero_with_graph(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.sum() * 0.0


def kept_mean(per_row: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of per-row losses over the kept rows of the GLOBAL batch, as this rank's share.

    DDP averages the ranks' gradients, so each rank returns world * (sum over
    its kept rows) / (kept rows on all ranks): the average over the ranks is
    the mean over every kept row, as in one process with the global batch (a
    mean over the rank's own kept rows would weigh the rows of a rank that
    kept fewer more). One process: the mean over the kept rows. 0 (with a
    graph) when no row is kept anywhere. keep=None: every row, every rank
    holds as many rows. Every rank must call it (a collective when keep is given).
    """
    if keep is None:
        return per_row.mean()
    kept_everywhere = int(all_gather_nograd(keep.sum().reshape(1)).sum())
    if kept_everywhere == 0:
        return _zero_with_graph(per_row)
    return per_row[keep].sum() * (get_world_size() / kept_everywhere)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, keep: Optional[torch.Tensor] = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross entropy averaged over the kept rows (all rows when keep is None; of all
    ranks, see kept_mean); 0 if none is kept."""
    if keep is None:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    per_row = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return kept_mean(per_row, keep)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """0.5 * (KL(p_a || p_b) + KL(p_b || p_a)) per row, averaged over kept rows (of all ranks, see kept_mean).

    logits_a, logits_b (B, K) over the same K candidates (softmax taken here).
    Symmetric in its arguments and exactly 0 when the distributions match.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"symmetric_kl needs equal shapes, got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
    log_p = F.log_softmax(logits_a.float(), dim=-1)
    log_q = F.log_softmax(logits_b.float(), dim=-1)
    per_row = 0.5 * ((log_p.exp() * (log_p - log_q)).sum(-1) + (log_q.exp() * (log_q - log_p)).sum(-1))
    return kept_mean(per_row, keep)


def momentum_contrastive_losses(
    image_embedding: torch.Tensor,
    text_embedding: torch.Tensor,
    image_momentum: torch.Tensor,
    text_momentum: torch.Tensor,
    scale: torch.Tensor,
    queue: Optional[FifoQueue] = None,
    keep: Optional[torch.Tensor] = None,
    ids: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """The instance-level loss and the task-level KL of COTS.

    image/text_embedding (B, D) online, unit norm (with grad);
    image/text_momentum (B, D) momentum features of the same pairs;
    queue: a FifoQueue with fields image/text (and ids when ``ids`` is
    given; read only here: the caller enqueues after the loss); keep (B,)
    bool from the momentum filter; ids (B,) product ids (same-product keys
    are not negatives). Returns {"itc": (i2t + t2i) / 2, "kl": symmetric KL
    of the i2t and t2i distributions over the same candidates}.
    """
    text_queue = queue.valid("text") if queue is not None else None
    image_queue = queue.valid("image") if queue is not None else None
    queue_ids = queue.valid("ids") if (queue is not None and ids is not None and "ids" in queue.fields) else None
    if queue_ids is None and ids is not None and text_queue is not None and text_queue.shape[0] > 0:
        raise ValueError("momentum_contrastive_losses: ids given but the queue keeps no 'ids' field")
    logits_i2t, labels = queue_logits(image_embedding, text_momentum, text_queue, scale, ids, queue_ids)
    logits_t2i, _ = queue_logits(text_embedding, image_momentum, image_queue, scale, ids, queue_ids)
    itc = 0.5 * (masked_cross_entropy(logits_i2t, labels, keep) + masked_cross_entropy(logits_t2i, labels, keep))
    return {"itc": itc, "kl": symmetric_kl(logits_i2t, logits_t2i, keep)}


# ------------------------------------------------------------ token level
FUSIONS = ("add", "concat")


class CrossModalTokenHead(nn.Module):
    """Predict a token's class from its own feature and the OTHER modality's global feature.

    forward(tokens (..., T), other_global (..., G)) -> logits (..., num_classes).
    fusion "add" (the paper): the global feature, projected to the token width
    when G != T, is ADDED to every token feature; "concat": [token ; global]
    (the earlier form, kept as an option). No attention across streams. Then
    Linear-GELU-LayerNorm-Linear. CMLM: tokens = text hidden states, other =
    the paired image's embedding, classes = the vocabulary. CMVM: tokens =
    image patch features of the masked image, other = the paired text's
    embedding, classes = the VQ codebook.
    """

    def __init__(
        self, token_dim: int, other_dim: int, num_classes: int, hidden_size: Optional[int] = None, fusion: str = "add"
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"CrossModalTokenHead fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        hidden_size = int(hidden_size or token_dim)
        if fusion == "add":
            self.other_projection = nn.Linear(other_dim, token_dim) if other_dim != token_dim else nn.Identity()
            fused_dim = token_dim
        else:
            fused_dim = token_dim + other_dim
        self.transform = nn.Linear(fused_dim, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder = nn.Linear(hidden_size, num_classes)

    def fuse_tokens(self, tokens: torch.Tensor, other_global: torch.Tensor) -> torch.Tensor:
        """The token features the classifier reads: tokens + proj(other) ("add") or [tokens ; other]."""
        if self.fusion == "add":
            return tokens + self.other_projection(other_global)
        return torch.cat([tokens, other_global], dim=-1)

    def forward(self, tokens: torch.Tensor, other_global: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.transform(self.fuse_tokens(tokens, other_global)))))


def masked_token_loss(
    head: CrossModalTokenHead,
    tokens: torch.Tensor,
    other_global: torch.Tensor,
    labels: torch.Tensor,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Cross entropy of ``head`` at the positions to predict only.

    tokens (B, N, T); other_global (B, G); labels (B, N) with IGNORE_INDEX
    where nothing is predicted; keep (B,) bool drops whole rows (filtered
    pairs). The head runs on the P selected positions, not on all B * N
    (the vocabulary decoder is the costly part). 0 (with a graph) when P = 0.
    """
    if keep is not None:
        labels = labels.masked_fill(~keep.unsqueeze(1), IGNORE_INDEX)
    rows, columns = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return _zero_with_graph(tokens) + _zero_with_graph(other_global)
    logits = head(tokens[rows, columns], other_global[rows])
    return F.cross_entropy(logits, labels[rows, columns])


# ------------------------------------------------------------ image tower
class MaskedPatchViT(nn.Module):
    """The paper's image tower: a ViT over patch tokens, masked on tokens (not pixels).

    transformers' ViTModel (no pooler). forward(images (B, 3, S, S),
    patch_mask (B, N) bool or None) -> last hidden states (B, 1 + N, C):
    position 0 is [CLS] (the global feature), 1..N the patches in row-major
    order. A masked patch's embedding is replaced by a learned mask token
    BEFORE the position embeddings and the transformer, so the tower sees
    that a patch is missing rather than a black square. ``use_mask_token``
    False (no CMVM) builds no mask token, so no parameter is left idle.
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 32,
        hidden_size: int = 128,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: Optional[int] = None,
        dropout: float = 0.0,
        use_mask_token: bool = True,
    ):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        image_size, patch_size = int(image_size), int(patch_size)
        if image_size % patch_size:
            raise ValueError(f"ViT image_size {image_size} is not divisible by patch_size {patch_size}")
        config = ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=int(hidden_size),
            num_hidden_layers=int(num_hidden_layers),
            num_attention_heads=int(num_attention_heads),
            intermediate_size=int(intermediate_size or 4 * int(hidden_size)),
            hidden_dropout_prob=float(dropout),
            attention_probs_dropout_prob=float(dropout),
        )
        self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=bool(use_mask_token))
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.out_channels = int(hidden_size)

    def forward(self, images: torch.Tensor, patch_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if patch_mask is not None:
            if self.vit.embeddings.mask_token is None:
                raise ValueError("MaskedPatchViT was built without a mask token (use_mask_token=False)")
            cells = self.grid_size[0] * self.grid_size[1]
            if patch_mask.shape[-1] != cells:
                raise ValueError(f"patch_mask has {patch_mask.shape[-1]} cells; the ViT has {cells} patches")
            patch_mask = patch_mask.bool()
        return self.vit(pixel_values=images, bool_masked_pos=patch_mask).last_hidden_state


# ---------------------------------------------------------------- masking
def random_patch_mask(batch: int, num_patches: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    """(B, N) bool with round(ratio * N) (at least 1) random positions True per row."""
    count = min(num_patches, max(1, int(round(ratio * num_patches))))
    scores = torch.rand(batch, num_patches, generator=generator).to(device)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :count], True)
    return mask


def resize_patch_mask(patch_mask: torch.Tensor, source_hw: Sequence[int], target_hw: Sequence[int]) -> torch.Tensor:
    """(B, hs*ws) bool on one grid -> (B, ht*wt) bool on another (nearest neighbour)."""
    source_hw, target_hw = tuple(int(v) for v in source_hw), tuple(int(v) for v in target_hw)
    if source_hw == target_hw:
        return patch_mask.bool()
    if patch_mask.shape[1] != source_hw[0] * source_hw[1]:
        raise ValueError(
            f"patch_mask has {patch_mask.shape[1]} cells, grid {source_hw} needs {source_hw[0] * source_hw[1]}"
        )
    grid = patch_mask.float().reshape(-1, 1, *source_hw)
    return F.interpolate(grid, size=target_hw, mode="nearest").flatten(1) > 0.5


def mask_image_patches(images: torch.Tensor, patch_mask: torch.Tensor, grid_hw: Sequence[int]) -> torch.Tensor:
    """Zero (the normalised mean colour) the pixels of the masked cells of an h x w grid.

    images (B, 3, H, W), patch_mask (B, h*w) bool True = masked.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    pixel_mask = F.interpolate(patch_mask.float().reshape(-1, 1, h, w), size=images.shape[-2:], mode="nearest")
    return images * (1.0 - pixel_mask.to(images.dtype))


def resize_grid_tokens(tokens: torch.Tensor, source_hw: Sequence[int], target_hw: Sequence[int]) -> torch.Tensor:
    """(B, hs*ws, C) grid tokens -> (B, ht*wt, C) by bilinear resampling (align a CNN grid to the VQ grid)."""
    source_hw, target_hw = tuple(int(v) for v in source_hw), tuple(int(v) for v in target_hw)
    if source_hw == target_hw:
        return tokens
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *source_hw)
    resized = F.interpolate(grid, size=target_hw, mode="bilinear", align_corners=False)
    return resized.flatten(2).transpose(1, 2)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    probability: float = 0.15,
    generator=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token-level BERT masking (80% [MASK] / 10% random / 10% kept) for batches without
    the dataset's whole-word ``masked_input_ids``. Returns (masked_ids, labels with -100)."""
    device = input_ids.device
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in special_ids:
        special |= input_ids == int(token_id)
    candidates = attention_mask.bool() & ~special
    draw = torch.rand(input_ids.shape, generator=generator).to(device)
    chosen = candidates & (draw < probability)
    # every row with a candidate predicts at least one token, so the loss is never empty by chance
    no_pick = ~chosen.any(1) & candidates.any(1)
    if bool(no_pick.any()):
        first = (candidates.float() * (1.0 + draw)).argmax(1)
        chosen[no_pick, first[no_pick]] = True
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, generator=generator).to(device)
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = int(mask_token_id)
    randomise = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(int(vocab_size), input_ids.shape, generator=generator).to(device)
    masked[randomise] = random_ids[randomise]
    return masked, labels
