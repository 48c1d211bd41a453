"""The image tokenizer as the MMF model `fashion_vqvae` (trained with mmf_run, then frozen).

Cheatsheet::

    mmf_run config=projects/vqvae/configs/train.yaml model=fashion_vqvae dataset=fashiongen
    # -> save/vqvae/fashion_vqvae_final.pth, loaded by
    from mmf_fashion.modules.vqvae import load_frozen_tokenizer
    tokenizer = load_frozen_tokenizer("save/vqvae/fashion_vqvae_final.pth", vqvae_model_config)

Reads `image` (B, 3, H, W) from the sample list. Training losses:
"<type>/<dataset>/reconstruction" (MSE on the normalised pixels) and
".../commitment" (weighted by commitment_weight); the codebook itself moves
by EMA, not by the optimizer. Outputs also carry `codes` (B, h, w) and the
batch's code `perplexity` and `used_fraction` (scalars) for monitoring.
"""

from __future__ import annotations

import dataclasses

from mmf.common.registry import registry

from mmf_fashion.models.base import FashionModelBase
from mmf_fashion.modules.vqvae import VQVAE, VQVAEOptions


@registry.register_model("fashion_vqvae")
class FashionVQVAE(FashionModelBase):
    """VQ-VAE with an EMA codebook (vector-quantize-pytorch) for MPFC / COTS codes."""

    model_name = "fashion_vqvae"
    options_class = VQVAEOptions

    def build(self):
        self.vqvae = VQVAE(**dataclasses.asdict(self.build_options()))

    def forward(self, sample_list):
        if "image" not in sample_list:
            raise KeyError(f"fashion_vqvae needs the 'image' key; the batch has {sorted(sample_list.keys())}")
        output = self.vqvae(sample_list["image"])
        usage = self.vqvae.code_usage(output["codes"])
        losses = {"reconstruction": output["reconstruction_loss"], "commitment": output["commitment_loss"]}
        return self.with_loss_keys(
            sample_list,
            {
                "losses": losses,
                "codes": output["codes"],
                "perplexity": usage["perplexity"],
                "used_fraction": usage["used_fraction"],
            },
        )

    def encode_codes(self, images):
        """images (B, 3, H, W) -> LongTensor (B, h*w) code ids (no codebook update)."""
        return self.vqvae.encode_codes(images)
