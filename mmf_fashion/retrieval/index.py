"""The embedding index: build from a gallery, save, load, search.

Cheatsheet::

    from mmf_fashion.retrieval.index import EmbeddingIndex, build_index, search

    index = build_index(model, paths, modality="image", batch_size=32)
    index.save("runs/val.index")                       # + runs/val.index.json
    index = EmbeddingIndex.load("runs/val.index")     # weights-only read of the torch backend
    hits = search(model, index, texts=["red dress"], k=5)
    hits[0][0]   # {"rank": 1, "score": 0.83, "row": 17, "path": ".../17_0.jpg"}

The model interface is described in mmf_fashion/retrieval/__init__.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from mmf_fashion.metrics.ranking import chunked_topk
from mmf_fashion.retrieval.gallery import embed_in_batches
from mmf_fashion.retrieval.images import close_h5_files, default_transform, describe_item, load_images
from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError, safe_torch_load

FORMAT = "mmf-fashion-index"
FORMAT_VERSION = 1
BACKENDS = ("auto", "faiss", "torch")
MODALITIES = ("image", "text")


class RetrievalError(ValueError):
    """A user-facing problem with an index, a query or a model (the CLI prints it)."""


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _normalize(embeddings: torch.Tensor) -> torch.Tensor:
    embeddings = embeddings.detach().float().cpu()
    return torch.nn.functional.normalize(embeddings, dim=1).contiguous()


def meta_path_of(path: Union[str, Path]) -> Path:
    return Path(str(path) + ".json")


class EmbeddingIndex:
    """L2-normalised embeddings (N, D) + one item dict per row; inner-product search."""

    def __init__(
        self,
        embeddings: torch.Tensor,
        items: Sequence[Dict],
        *,
        modality: str,
        model_info: Optional[Dict] = None,
        backend: str = "auto",
    ):
        if embeddings.dim() != 2 or embeddings.shape[0] != len(items):
            raise RetrievalError(
                f"index: {len(items)} items but embeddings of shape {tuple(embeddings.shape)}"
            )
        if modality not in MODALITIES:
            raise RetrievalError(f"index: modality must be one of {MODALITIES}, got {modality!r}")
        if backend not in BACKENDS:
            raise RetrievalError(f"index: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend == "faiss" and not faiss_available():
            raise RetrievalError("index: backend 'faiss' asked for but faiss does not import (pip install 'mmf-fashion[index]')")
        self.embeddings = _normalize(embeddings)
        self.items = [dict(item) for item in items]
        self.modality = modality
        self.model_info = dict(model_info or {})
        self.backend = backend
        self._faiss_index = None
        if backend == "faiss":
            import faiss

            self._faiss_index = faiss.IndexFlatIP(self.dim)
            if len(self):
                self._faiss_index.add(self.embeddings.numpy())

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search_embeddings(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores (Q, k'), rows (Q, k')) of the k' = min(k, N) nearest rows."""
        queries = _normalize(queries)
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise RetrievalError(
                f"query embeddings of shape {tuple(queries.shape)} do not match the index dimension "
                f"{self.dim} (was the index built with another model?)"
            )
        k = min(int(k), len(self))
        if k < 1:
            return torch.empty(queries.shape[0], 0), torch.empty(queries.shape[0], 0, dtype=torch.long)
        if self._faiss_index is not None:
            scores, rows = self._faiss_index.search(queries.numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(rows).long()
        return chunked_topk(queries, self.embeddings, k)

    def save(self, path: Union[str, Path]) -> Tuple[Path, Path]:
        """Write the index file and its `<path>.json` sidecar; returns both paths."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.backend == "faiss":
            import faiss

            faiss.write_index(self._faiss_index, str(path))
        else:
            torch.save({"embeddings": self.embeddings}, path)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backend": self.backend,
            "modality": self.modality,
            "dim": self.dim,
            "count": len(self),
            "model": self.model_info,
            "items": self.items,
        }
        meta_path = meta_path_of(path)
        meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return path, meta_path

    @classmethod
    def load(cls, path: Union[str, Path], allow_unsafe: bool = False) -> "EmbeddingIndex":
        """allow_unsafe: the user's opt-in (--allow-unsafe-load) for a torch
        embeddings file that needs full unpickling; refused otherwise."""
        path, meta_path = Path(path), meta_path_of(path)
        if not path.is_file():
            raise RetrievalError(f"{path}: index file not found")
        if not meta_path.is_file():
            raise RetrievalError(f"{meta_path}: the index's sidecar file is missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RetrievalError(f"{meta_path}: not valid JSON ({error})") from error
        for field in ("format", "backend", "modality", "dim", "count", "items"):
            if field not in meta:
                raise RetrievalError(f"{meta_path}: field '{field}' missing")
        if meta["format"] != FORMAT:
            raise RetrievalError(f"{meta_path}: format {meta['format']!r} is not {FORMAT!r}")
        if meta["backend"] == "faiss":
            if not faiss_available():
                raise RetrievalError(f"{path}: a faiss index, but faiss does not import here (pip install 'mmf-fashion[index]')")
            import faiss

            stored = faiss.read_index(str(path))
            if stored.ntotal:
                embeddings = torch.from_numpy(stored.reconstruct_n(0, stored.ntotal))
            else:
                embeddings = torch.zeros(0, stored.d)
        elif meta["backend"] == "torch":
            try:
                stored = safe_torch_load(str(path), allow_unsafe=allow_unsafe)
            except UnsafeCheckpointError as error:  # an index may come from anyone: never unpickle it silently
                raise RetrievalError(str(error)) from error
            if not isinstance(stored, dict) or not torch.is_tensor(stored.get("embeddings")):
                raise RetrievalError(f"{path}: expected a torch file {{'embeddings': (N, D) tensor}}")
            embeddings = stored["embeddings"]
        else:
            raise RetrievalError(f"{meta_path}: unknown backend {meta['backend']!r}")
        if tuple(embeddings.shape) != (meta["count"], meta["dim"]) or len(meta["items"]) != meta["count"]:
            raise RetrievalError(
                f"{path}: holds {tuple(embeddings.shape)} embeddings and {len(meta['items'])} items, "
                f"the sidecar says ({meta['count']}, {meta['dim']})"
            )
        return cls(
            embeddings, meta["items"], modality=meta["modality"],
            model_info=meta.get("model"), backend=meta["backend"],
        )


def model_image_transform(model, image_size: int = 224) -> Callable:
    """The model's own eval transform when it has one, else the default."""
    own = getattr(model, "image_transform", None)
    return own() if callable(own) else default_transform(image_size)


def _require(model, method: str, why: str):
    fn = getattr(model, method, None)
    if not callable(fn):
        raise RetrievalError(
            f"{type(model).__name__} has no {method}() method, needed {why} "
            f"(see the interface in mmf_fashion/retrieval/__init__.py)"
        )
    return fn


def build_index(
    model,
    items: Sequence,
    *,
    modality: str = "image",
    batch_size: int = 32,
    progress: bool = True,
    image_size: int = 224,
    transform: Optional[Callable] = None,
    backend: str = "auto",
    model_info: Optional[Dict] = None,
    records: Optional[Sequence[Dict]] = None,
) -> EmbeddingIndex:
    """Embed a gallery (image paths or images.H5Image rows, or texts) with
    the model and index it; images are loaded batch by batch.

    records: optional extra fields per item (e.g. product ids) kept in the index.
    """
    if modality not in MODALITIES:
        raise RetrievalError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if len(items) == 0:
        raise RetrievalError("the gallery is empty")
    if records is not None and len(records) != len(items):
        raise RetrievalError(f"{len(records)} records for {len(items)} gallery items")
    if modality == "image":
        embed = _require(model, "embed_images", "to index images")
        transform = transform or model_image_transform(model, image_size)
        h5_files: Dict = {}  # HDF5 galleries: one handle per file for the whole build
        try:
            embeddings = embed_in_batches(
                embed, list(items), batch_size=batch_size, progress=progress, desc="index images",
                prepare=lambda batch: load_images(batch, transform, h5_files),
            )
        finally:
            close_h5_files(h5_files)
        rows = [{"path": describe_item(p)} for p in items]
    else:
        embed = _require(model, "embed_texts", "to index texts")
        embeddings = embed_in_batches(
            embed, list(items), batch_size=batch_size, progress=progress, desc="index texts"
        )
        rows = [{"text": t} for t in items]
    if records is not None:
        rows = [{**extra, **row} for row, extra in zip(rows, records)]
    return EmbeddingIndex(embeddings, rows, modality=modality, model_info=model_info, backend=backend)


def embed_queries(
    model, *, texts: Optional[Sequence[str]] = None, images: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Query embeddings: texts -> embed_texts, images -> embed_images, both ->
    embed_composed(images, texts) (one reference image per text)."""
    texts = [texts] if isinstance(texts, str) else (list(texts) if texts is not None else None)
    if images is not None and not isinstance(images, torch.Tensor):
        images = torch.stack(list(images))
    with torch.no_grad():
        if texts and images is not None:
            if images.shape[0] != len(texts):
                raise RetrievalError(
                    f"composed queries need one image per text: {images.shape[0]} images, {len(texts)} texts"
                )
            fn = _require(model, "embed_composed", "for image + text (TGIR) queries")
            return fn(images, texts).float().cpu()
        if texts:
            return _require(model, "embed_texts", "for text queries")(texts).float().cpu()
        if images is not None:
            return _require(model, "embed_images", "for image queries")(images).float().cpu()
    raise RetrievalError("a query needs texts, images, or both")


def search(
    model,
    index: EmbeddingIndex,
    *,
    texts: Optional[Sequence[str]] = None,
    images: Optional[torch.Tensor] = None,
    k: int = 10,
) -> List[List[Dict]]:
    """One ranked list per query: {"rank", "score", "row", **the row's item}."""
    scores, rows = index.search_embeddings(embed_queries(model, texts=texts, images=images), k)
    results = []
    for query_scores, query_rows in zip(scores.tolist(), rows.tolist()):
        results.append(
            [
                {"rank": r + 1, "score": float(s), "row": int(i), **index.items[i]}
                for r, (s, i) in enumerate(zip(query_scores, query_rows))
                if i >= 0
            ]
        )
    return results
