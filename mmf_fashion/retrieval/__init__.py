"""Retrieval with a trained model: embed a gallery, save an index, search it,
classify zero-shot.

Cheatsheet::

    from mmf_fashion.retrieval import build_index, EmbeddingIndex, search, zero_shot_classify

    index = build_index(model, image_paths, modality="image")   # progress bar
    index.save("runs/gallery.index")          # + runs/gallery.index.json (items, model)
    index = EmbeddingIndex.load("runs/gallery.index")
    search(model, index, texts=["red dress"], k=5)               # text -> images
    search(model, index, images=[img_tensor], k=5)               # image -> images
    search(model, index, images=[img], texts=["is blue"], k=5)   # TGIR: composed
    preds, logits = zero_shot_classify(model.embed_texts, image_emb, ["dress", "shirt"])

    # command line
    mmf-fashion index build --model align --checkpoint save/best.ckpt \
        --images data/synthetic/fashiongen/images/val --out runs/val.index
    mmf-fashion index search --index runs/val.index --text "red dress" -k 5

The model interface (any registered model; the model authors implement it):

- ``embed_images(images) -> (N, D)``: images FloatTensor (N, 3, H, W),
  normalised as the model's image processor does (ImageNet mean/std);
- ``embed_texts(texts) -> (N, D)``: texts list[str] of raw strings (the
  model tokenises them itself);
- optional ``embed_composed(images, texts) -> (N, D)``: one query per
  (reference image, modification text) pair, for TGIR;
- optional ``image_transform() -> callable(PIL.Image) -> FloatTensor(3, H, W)``:
  the model's own evaluation transform; without it the index uses resize +
  centre crop to `image_size` + ImageNet normalisation.

Embeddings are compared by inner product after L2 normalisation (cosine).
Every call runs under torch.no_grad(); the caller puts the model in eval().

Files: the index file is a faiss index (faiss.write_index: IndexFlatIP,
IndexIVFFlat, IndexIVFPQ or IndexHNSWFlat) when faiss imports, else a torch
file {"embeddings": (N, D) float32} (flat only); beside it `<file>.json`
holds the backend, the kind and its parameters (nlist, nprobe, pq_m, M,
ef_construction, ef_search ...), the query kinds it answers, the items (path
or text per row) and how to rebuild the model (name, checkpoint, config,
overrides) with the checkpoint's sha256. `add_items` grows an index.

Plain torch here; only model_io.resolve_model_config imports MMF (through the
bridge), and the model is built by mmf_fashion.runtime.build_model_from_config.
Torch files (embeddings, checkpoints) are read weights-only; `--allow-unsafe-load`
opts in to full unpickling for a file you trust.
"""

from mmf_fashion.retrieval.gallery import embed_image_dataset, embed_in_batches
from mmf_fashion.retrieval.index import (
    EmbeddingIndex,
    RetrievalError,
    add_items,
    build_index,
    embed_queries,
    faiss_available,
    search,
)
from mmf_fashion.retrieval.zeroshot import class_text_embeddings, zero_shot_classify

__all__ = [
    "EmbeddingIndex",
    "RetrievalError",
    "add_items",
    "build_index",
    "class_text_embeddings",
    "embed_image_dataset",
    "embed_in_batches",
    "embed_queries",
    "faiss_available",
    "search",
    "zero_shot_classify",
]
