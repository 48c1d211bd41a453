"""FashionViL's shared encoder: image grid tokens + ONE BERT used as text and fusion encoder.

Cheatsheet::

    net = FashionViLNetwork(config)              # see network.py; holds these methods
    tokens = net.image_tokens(images)            # (B, N, H): projected grid features
    image_emb = net.image_embedding(images)      # (B, H): mean of the grid tokens
    text_emb = net.text_embedding(ids, mask)     # (B, H): mean of the text outputs (non-pad)
    fused = net.fuse(ids, mask, None, tokens)    # FusedOutput: sequence (B, L+N, H), pooled (B, H)
    query = fused.visual_mean()                  # (B, H): TGIR / MVC composed embedding

The transformer sees either text alone ([CLS] + WordPiece tokens, BERT's own
embeddings) or [text tokens ; visual tokens]. Visual tokens get their own
token-type and position embeddings and LayerNorm, initialised from BERT's
tables, so a pretrained BERT starts from embeddings it already knows.
As in the official code, the unimodal image embedding does not go through
the transformer: it is the mean of the projected grid tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from mmf_fashion.modules.encoders import build_image_encoder, build_text_encoder, masked_mean


class VisualEmbeddings(nn.Module):
    """Grid tokens (B, N, H) -> tokens + visual type + visual position -> LayerNorm -> dropout."""

    def __init__(self, text_embeddings: nn.Module, visual_token_type: int = 1):
        super().__init__()
        text_types = text_embeddings.token_type_embeddings
        text_positions = text_embeddings.position_embeddings
        # copies of BERT's tables, trained separately from the text ones
        self.token_type_embeddings = copy.deepcopy(text_types)
        self.position_embeddings = copy.deepcopy(text_positions)
        self.LayerNorm = copy.deepcopy(text_embeddings.LayerNorm)
        self.dropout = nn.Dropout(text_embeddings.dropout.p)
        self.visual_token_type = min(int(visual_token_type), text_types.num_embeddings - 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, _ = tokens.shape
        if num_tokens > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"{num_tokens} visual tokens exceed the {self.position_embeddings.num_embeddings} "
                "visual positions: use a smaller image or a coarser image encoder"
            )
        positions = torch.arange(num_tokens, device=tokens.device)
        types = torch.full((num_tokens,), self.visual_token_type, dtype=torch.long, device=tokens.device)
        embeddings = tokens + self.position_embeddings(positions) + self.token_type_embeddings(types)
        return self.dropout(self.LayerNorm(embeddings))


@dataclass
class FusedOutput:
    """The fusion encoder's output for [text ; visual] inputs."""

    sequence: torch.Tensor  # (B, L + N, H)
    pooled: torch.Tensor  # (B, H): BERT pooler on the fused [CLS]
    text_length: int  # L

    @property
    def text_states(self) -> torch.Tensor:
        return self.sequence[:, : self.text_length]

    @property
    def visual_states(self) -> torch.Tensor:
        return self.sequence[:, self.text_length :]

    def visual_mean(self) -> torch.Tensor:
        """Mean over the visual output positions: FashionViL's composed (text + image) embedding."""
        return self.visual_states.mean(dim=1)


def _option(config: Optional[Mapping[str, Any]], key: str, default: Any) -> Any:
    if config is None:
        return default
    value = config.get(key, default)
    return default if value is None else value


class FashionViLEncoding:
    """Mixin: the encoder methods over the attributes image_encoder,
    image_projection, text_encoder and visual_embeddings (set by build_encoders).

    A mixin, not a submodule, so that the parameters keep the top-level names
    (`image_encoder.*`, `text_encoder.*`) that lr multipliers and
    pretrained_state_mapping refer to, both in the plain torch network and in
    the MMF model.
    """

    def build_encoders(self, config: Mapping[str, Any]) -> None:
        """config keys: image_encoder {name, pretrained}, text_encoder {name, hidden_size, ...},
        visual_token_type (default 1)."""
        image_config = config.get("image_encoder") or {}
        self.image_encoder = build_image_encoder(
            _option(image_config, "name", "resnet50"), pretrained=_option(image_config, "pretrained", None)
        )
        text_config = dict(config.get("text_encoder") or {})
        text_config.setdefault("add_pooling_layer", True)
        self.text_encoder = build_text_encoder(text_config)
        if getattr(self.text_encoder, "pooler", None) is None:
            raise ValueError("FashionViL needs the text encoder's pooler (text_encoder.add_pooling_layer: true)")
        self.hidden_size = int(self.text_encoder.config.hidden_size)
        self.image_projection = nn.Linear(self.image_encoder.out_channels, self.hidden_size)
        self.visual_embeddings = VisualEmbeddings(
            self.text_encoder.embeddings, visual_token_type=int(_option(config, "visual_token_type", 1))
        )

    # -- image side ---------------------------------------------------------
    def image_grid(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> raw grid features (B, N, C), N = h*w row-major."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        return self.image_encoder(images).flatten(2).transpose(1, 2)

    def image_tokens(self, images: torch.Tensor, patch_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images (B, 3, H, W) [, patch_mask (B, N) bool, True = masked] -> (B, N, hidden).

        Masked grid features are set to zero before the projection (MPFC)."""
        grid = self.image_grid(images)
        if patch_mask is not None:
            if patch_mask.shape != grid.shape[:2]:
                raise ValueError(
                    f"patch_mask has shape {tuple(patch_mask.shape)} but the image encoder gives "
                    f"{grid.shape[1]} grid cells per image (batch {grid.shape[0]})"
                )
            grid = grid.masked_fill(patch_mask.bool().unsqueeze(-1), 0.0)
        return self.image_projection(grid)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, hidden), not normalised: mean of the grid tokens."""
        return self.image_tokens(images).mean(dim=1)

    # -- text side ----------------------------------------------------------
    def text_embedding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (B, L) -> (B, hidden): mean over non-pad text outputs."""
        output = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return masked_mean(output.last_hidden_state, attention_mask)

    # -- fusion -------------------------------------------------------------
    def fuse(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor],
        visual_tokens: torch.Tensor,
    ) -> FusedOutput:
        """[text ; visual] through the shared transformer.

        input_ids, attention_mask, token_type_ids (B, L); visual_tokens (B, N, hidden)
        (from image_tokens). Every visual token is attended to."""
        from transformers.masking_utils import create_bidirectional_mask

        if visual_tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(f"fuse: {input_ids.shape[0]} texts but {visual_tokens.shape[0]} images in the batch")
        text_states = self.text_encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        visual_states = self.visual_embeddings(visual_tokens)
        states = torch.cat([text_states, visual_states], dim=1)
        visual_mask = attention_mask.new_ones(visual_tokens.shape[:2])
        joint_mask = torch.cat([attention_mask, visual_mask], dim=1)
        mask = create_bidirectional_mask(
            config=self.text_encoder.config, inputs_embeds=states, attention_mask=joint_mask
        )
        sequence = self.text_encoder.encoder(states, attention_mask=mask).last_hidden_state
        pooled = self.text_encoder.pooler(sequence)
        return FusedOutput(sequence=sequence, pooled=pooled, text_length=input_ids.shape[1])

    def composed_embedding(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(text + image) -> (B, hidden), not normalised: mean over the visual output positions."""
        fused = self.fuse(input_ids, attention_mask, token_type_ids, self.image_tokens(images))
        return fused.visual_mean()
