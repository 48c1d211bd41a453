"""COTS (CVPR 2022) as the MMF model `cots`: a thin adapter over
mmf_fashion.modules.cots_network (plain torch: towers, momentum towers,
queues, the adaptive momentum filter, ITC / KL / CMLM / CMVM).

Cheatsheet::

    mmf_run config=projects/vqvae/configs/train.yaml model=fashion_vqvae dataset=fashiongen  # CMVM's tokenizer
    mmf_run config=projects/cots/configs/pretrain.yaml model=cots dataset=fashiongen
    mmf_run config=projects/cots/configs/itr.yaml model=cots dataset=fashiongen

    model = registry.get_model_class("cots")(config); model.build()
    out = model(sample_list)   # train: {"losses": {"train/fashiongen/itc": ..., ".../kl": ...,
                               #          ".../cmlm": ..., ".../cmvm": ...}, ...}
    model.embed_images(images); model.embed_texts(["red dress"])   # (N, D) unit norm

What one training step does, the sample-list keys it reads and the state that
survives a resume: modules/cots_network.py. The options (CotsOptions) are the
keys of models/configs/cots.yaml; docs/models/cots.md describes them for users.
The filter starts at MMF's update number (``filter.start_update``).
Outputs: ``losses`` (only in training the queue-based ones; in eval an
in-batch ``itc``), ``image_embedding`` and ``text_embedding`` (B, D).
"""

from __future__ import annotations

from typing import Dict

from mmf.common.registry import registry

from mmf_fashion.models.base import FashionModelBase
from mmf_fashion.modules.cots_network import COTSMethods, CotsOptions


@registry.register_model("cots")
class COTS(COTSMethods, FashionModelBase):
    """COTS: two towers, momentum towers, two queues, CMLM/CMVM, task KL and the AMF filter."""

    model_name = "cots"
    options_class = CotsOptions

    def build(self):
        self.build_network(self.build_options())

    def forward(self, sample_list) -> Dict:
        """sample_list: the keys of modules/cots_network.py; returns {"losses", "image_embedding",
        "text_embedding"[, "kept_fraction"]} with MMF's loss keys."""
        update = int(registry.get("num_updates", no_warning=True) or 0)
        return self.with_loss_keys(sample_list, self.run(sample_list, update))
