"""FashionViL's task heads (plain torch).

Cheatsheet::

    itc = ContrastiveProjection(hidden, 256)      # f: image (B, H) -> (B, 256); g: text -> (B, 256)
    itm = ITMHead(hidden)                         # fused pooled (B, H) -> (B, 2) logits
    mlm = MLMHead(hidden)                         # text states (M, H), word embedding (V, H) -> (M, V)
    mpfc = MPFCHead(hidden, codebook_size)        # visual states (B, N, H) -> (B, N, K)
    pac = CosineClassifier(hidden, num_attributes, scale=10.0)   # (B, H) -> (B, A)
    scr = ClassificationHead(hidden, num_classes)                # fused pooled (B, H) -> (B, C)
    ocir = CategorySubspaces(hidden, num_categories, num_subspaces=5)
    query = ocir.outfit_query(item_emb, item_categories, item_valid, blank_category)   # (B, H)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.losses import LogitScale


class PredictionTransform(nn.Sequential):
    """dense -> GELU -> LayerNorm, as in BERT's prediction heads."""

    def __init__(self, hidden: int):
        # eps 1e-12: BERT's (and the official FashionViL's) head, so converted weights give the same logits
        super().__init__(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12))


def resolve_contrastive_dim(value, hidden: int) -> int:
    """contrastive_dim option -> the size of the contrastive space.

    null: a third of the hidden size, the paper's ratio (BERT-base 768 -> 256);
    0: no projection, the hidden space itself (as the official code)."""
    if value is None:
        return max(1, int(hidden) // 3)
    value = int(value)
    if value < 0:
        raise ValueError(f"contrastive_dim must be >= 0 (0 = no projection), got {value}")
    return value


class ContrastiveProjection(nn.Module):
    """The two linear maps of one contrastive task into its own space: the
    paper's f (image side) and g (text side for ITC, composed side for MVC).

    dim 0 keeps the hidden space (identity, no parameters). ITC and MVC each
    own one, so MVC never moves the space that retrieval ranks in."""

    def __init__(self, hidden: int, dim: int):
        super().__init__()
        self.dim = int(dim) if dim else int(hidden)
        self.f = nn.Linear(hidden, dim) if dim else nn.Identity()
        self.g = nn.Linear(hidden, dim) if dim else nn.Identity()


class ITMHead(nn.Module):
    """Binary image-text matching on the fused pooled [CLS]: class 1 = the pair matches."""

    def __init__(self, hidden: int):
        super().__init__()
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


class MLMHead(nn.Module):
    """Masked-token prediction whose output layer is tied to BERT's word embeddings.

    The tied weight is passed at call time instead of being stored, so the
    state dict holds it once (under text_encoder.*)."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.transform = PredictionTransform(hidden)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, states: torch.Tensor, word_embedding_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(states), word_embedding_weight, self.bias)


class MPFCHead(nn.Module):
    """Masked patch feature classification: visual states -> logits over the tokenizer's codes."""

    def __init__(self, hidden: int, codebook_size: int):
        super().__init__()
        self.transform = PredictionTransform(hidden)
        self.decoder = nn.Linear(hidden, codebook_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(states))


class CosineClassifier(nn.Module):
    """logits = s * cos(x, w_a) for every class a; s learnable (kept positive).

    Used by PAC on both the image and the text embedding, so one set of
    attribute prototypes is shared by the two modalities."""

    def __init__(self, hidden: int, num_classes: int, scale: float = 10.0, learnable_scale: bool = True):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, hidden) * hidden**-0.5)
        self.scale = LogitScale(init=scale, learnable=learnable_scale)

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale() * F.normalize(embedding, dim=-1) @ F.normalize(self.prototypes, dim=-1).t()


class ClassificationHead(nn.Module):
    """Early-fusion classifier (SCR): fused pooled (B, H) -> MLP -> (B, C) logits."""

    def __init__(self, hidden: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden * 2),
            nn.GELU(),
            nn.LayerNorm(hidden * 2),
            nn.Linear(hidden * 2, num_classes),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)


class CategorySubspaces(nn.Module):
    """CSA-Net-style category-conditioned embeddings for outfit complementary item retrieval.

    K learned masks m_k (D,) span the subspaces; a pair of categories
    (a, b) attends over them: m(a, b) = sum_k softmax(f(a, b))_k m_k. The
    compatibility of an outfit item x (category a) with a candidate y of
    the blank's category b is <m(a,b) * x, m(a,b) * y> with x, y unit
    vectors. Averaged over the outfit's items this is linear in y:

        score(outfit, y) = < (1/n) sum_i m(a_i, b)^2 * x_i , y >

    so the outfit collapses into one query vector and the gallery needs one
    embedding per item: retrieval stays a dot product.
    """

    def __init__(self, hidden: int, num_categories: int, num_subspaces: int = 5, category_dim: int = 32):
        super().__init__()
        self.num_categories = int(num_categories)
        self.masks = nn.Parameter(1.0 + 0.1 * torch.randn(num_subspaces, hidden))
        self.category_embedding = nn.Embedding(self.num_categories, category_dim)
        self.attention = nn.Sequential(
            nn.Linear(2 * category_dim, category_dim), nn.ReLU(), nn.Linear(category_dim, num_subspaces)
        )

    def _check_categories(self, categories: torch.Tensor, name: str) -> None:
        if categories.numel() and (int(categories.min()) < 0 or int(categories.max()) >= self.num_categories):
            raise ValueError(
                f"{name} holds category ids in [{int(categories.min())}, {int(categories.max())}] but the "
                f"OCIR head has {self.num_categories} categories (model_config.fashionvil.ocir.num_categories)"
            )

    def pair_mask(self, category_a: torch.Tensor, category_b: torch.Tensor) -> torch.Tensor:
        """Category ids (...), (...) -> the pair's mask (..., D)."""
        pair = torch.cat([self.category_embedding(category_a), self.category_embedding(category_b)], dim=-1)
        weights = self.attention(pair).softmax(dim=-1)
        return weights @ self.masks

    def outfit_query(
        self,
        item_embedding: torch.Tensor,
        item_categories: torch.Tensor,
        item_valid: torch.Tensor,
        blank_category: torch.Tensor,
    ) -> torch.Tensor:
        """item_embedding (B, K, D), item_categories (B, K), item_valid (B, K) bool,
        blank_category (B,) -> L2-normalised query (B, D)."""
        self._check_categories(item_categories[item_valid.bool()], "outfit_categories")
        self._check_categories(blank_category, "blank_category")
        items = F.normalize(item_embedding, dim=-1)
        masks = self.pair_mask(
            item_categories.clamp(0, self.num_categories - 1), blank_category.unsqueeze(1).expand_as(item_categories)
        )
        weights = item_valid.to(items.dtype).unsqueeze(-1)
        summed = (masks.pow(2) * items * weights).sum(dim=1)
        query = summed / weights.sum(dim=1).clamp(min=1.0)
        return F.normalize(query, dim=-1)
