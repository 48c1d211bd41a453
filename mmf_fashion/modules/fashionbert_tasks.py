"""FashionBERT's task pieces in plain torch: alignment negatives, masked patch loss, adaptive loss weights.

Cheatsheet::

    from mmf_fashion.modules import fashionbert_tasks as tasks
    partner = tasks.sample_alignment_negatives(product_id, subcategory_id)   # (B,) row whose text to borrow
    loss = tasks.masked_patch_loss(prediction, target, "kl")
    weights = tasks.adaptive_loss_weights(tasks.task_gradient_gram(losses, shared_inputs), alpha=1.0)
    bank = tasks.SubcategoryTextBank(size=8)       # texts of earlier batches, per subcategory
    ids, mask, types, labels = tasks.query_title_inputs(query_ids, query_mask, title_ids, title_mask)

The network that uses them: modules/fashionbert.py (docs/models/fashionbert.md has the decisions).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
MPM_LOSSES = ("kl", "mse")


def sample_alignment_negatives(
    product_id: torch.Tensor, subcategory_id: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
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


def choose_negative_rows(
    partner: torch.Tensor, fraction: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
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
        rows.append(
            torch.cat(
                [(g if g is not None else torch.zeros_like(x)).reshape(-1).float() for g, x in zip(grads, inputs)]
            )
        )
    flat = torch.stack(rows)
    return flat @ flat.t()


def combine_losses(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, Any]
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

    def add(
        self,
        product_id: torch.Tensor,
        subcategory_id: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> None:
        for row, (product, subcategory) in enumerate(zip(product_id.tolist(), subcategory_id.tolist())):
            if subcategory < 0:  # unlabelled product: no subcategory to match
                continue
            bucket = [entry for entry in self.entries.get(subcategory, []) if entry[0] != product]
            bucket.append(
                (
                    product,
                    input_ids[row].detach().clone(),
                    attention_mask[row].detach().clone(),
                    token_type_ids[row].detach().clone(),
                )
            )
            self.entries[subcategory] = bucket[-self.size :]

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


def pair_with_negative_texts(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: Optional[torch.Tensor],
    product_id: torch.Tensor,
    subcategory_id: Optional[torch.Tensor],
    fraction: float,
    bank: Optional[SubcategoryTextBank] = None,
    generator: Optional[torch.Generator] = None,
    pad_id: int = 0,
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
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "negative": negative,
        "text_product": text_product,
        "source": source,
    }


def query_title_inputs(
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    title_ids: torch.Tensor,
    title_mask: torch.Tensor,
    title_labels: Optional[torch.Tensor] = None,
):
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
