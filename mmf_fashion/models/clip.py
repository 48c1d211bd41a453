"""CLIP and FashionCLIP from released weights (transformers' CLIPModel) as the MMF model `clip`.

Cheatsheet::

    mmf_run config=projects/clip/configs/zeroshot_scr.yaml model=clip dataset=fashiongen run_type=val \
        model_config.clip.pretrained=patrickjohncyh/fashion-clip
    mmf_run config=projects/clip/configs/itr.yaml model=clip dataset=fashiongen model_config.clip.pretrained=<dir>
    mmf_run config=projects/clip/configs/tgir.yaml model=clip dataset=fashioniq model_config.clip.pretrained=<dir>

    model = registry.get_model_class("clip")(config); model.build()
    model.embed_images(images); model.embed_texts(["red dress"])    # (N, D) unit norm
    model.embed_composed(images, ["make it blue"])                  # TGIR queries (any head, see below)
    model.zeroshot_scores(images)                                   # (N, C) over the class prompts

``model_config.clip.pretrained``: a hub name or a directory written by
save_pretrained holding a CLIPModel (model_type clip: OpenAI CLIP, FashionCLIP),
its tokenizer and its image processor; another model_type is refused.

Heads (``model_config.clip.head``):
- ``contrastive`` (ITR/TIR fine-tuning): ALIGN's loss,
  ``modules.losses.contrastive_loss`` with negatives gathered from every rank
  and optional label smoothing; eval returns ``image_embedding`` /
  ``text_embedding`` (B, D) for r@k_general.
- ``zeroshot`` (SCR): ALIGN's prompt classifier (``models.align.PromptZeroShot``):
  class names from the dataset's vocabulary unless given, ``scores`` (B, C)
  for accuracy / macro_f1; a CE on ``targets`` in training.
- ``composition`` (TGIR): query = ``GatedCombiner(reference image emb, text
  emb)``, target = the target's image embedding (= embed_images, so the
  fashioniq gallery embeds alike); ``batch_classification_loss``. With
  ``freeze_towers: true`` only the combiner and the temperature learn
  (CLIP4Cir's second stage). embed_composed without this head (no combiner)
  is the training-free baseline normalise(image emb + text emb).
- ``ocir``: query = fashionvil's category-conditioned subspaces
  (``CategorySubspaces``) over the outfit items' image embeddings, target =
  the blank's image embedding; ``batch_classification_loss``; keys
  ``query_embedding`` / ``target_embedding`` as r@k_ocir reads them.

Text: the datasets tokenise with the project's BERT WordPiece (processors/text.py),
whose ids mean nothing to CLIP's BPE vocabulary, and their text processor cannot
take CLIP's tokenizer (it emits no token_type_ids). So the model keeps one way:
it tokenises the batch's raw ``text`` with the checkpoint's tokenizer, the same
object that embeds prompts and embed_texts queries; the dataset's input_ids are
not read. Images: the project YAMLs set the dataset's image size / mean / std
from the checkpoint's image processor (``pretrained_image`` resolver, see
models/align.py); ``image_transform()`` gives the index the same pipeline.

Input keys: contrastive: image (B, 3, H, W), text list[str] [, image_2];
zeroshot: image [, targets (B,)]; composition: reference_image, target_image
(B, 3, H, W), text; ocir: outfit_images (B, K, 3, H, W), outfit_mask (B, K),
outfit_categories (B, K), blank_image (B, 3, H, W), blank_category (B,).
"""

from __future__ import annotations

from typing import Dict

from mmf.common.registry import registry

from mmf_fashion.models.align import PromptZeroShot
from mmf_fashion.models.base import FashionModelBase
from mmf_fashion.modules.clip import CLIPMethods, ClipOptions


@registry.register_model("clip")
class CLIP(PromptZeroShot, CLIPMethods, FashionModelBase):
    """CLIP / FashionCLIP dual encoder from released weights; four heads (modules/clip.py)."""

    model_name = "clip"
    options_class = ClipOptions

    def build(self):
        options = self.build_options()
        self.build_network(options)
        self.configure_zeroshot(options.zeroshot or {}, "clip")

    def forward(self, sample_list) -> Dict:
        """sample_list: the keys of the head (module docstring).

        Returns {"losses": {"<type>/<dataset>/<loss>": scalar}} plus, contrastive:
        image_embedding / text_embedding (B, D); zeroshot: scores (B, C);
        composition and ocir: query_embedding / target_embedding (B, D); all unit norm.

        Example: ``model(batch)["losses"]["train/fashiongen/itc"].backward()``."""
        return self.with_loss_keys(sample_list, self.run(sample_list))
