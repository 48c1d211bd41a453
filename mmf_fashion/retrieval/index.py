"""The embedding index: build from a gallery, save, load, search, add items.

Cheatsheet::

    from mmf_fashion.retrieval.index import EmbeddingIndex, build_index, search

    index = build_index(model, paths, modality="image", batch_size=32)          # exact (flat)
    index = build_index(model, paths, kind="ivf", params={"nlist": 256})       # approximate (faiss)
    index = build_index(model, paths, kind="hnsw")                             # defaults from the size
    index.save("runs/val.index")                       # + runs/val.index.json
    index = EmbeddingIndex.load("runs/val.index")     # weights-only read of the torch backend
    hits = search(model, index, texts=["red dress"], k=5, nprobe=32)   # ef=... for hnsw
    hits[0][0]   # {"rank": 1, "score": 0.83, "row": 17, "path": ".../17_0.jpg"}
    add_items(model, index, more_paths)                # no rebuild; names must be new

Kinds (faiss, inner product over L2-normalised embeddings; default_params()
says how the defaults follow the gallery size N):

- ``flat``: exact search (faiss IndexFlatIP, or a torch tensor with backend="torch");
- ``ivf``: IndexIVFFlat, nlist lists trained by k-means, nprobe lists scanned per query;
  with ``pq_m`` an IndexIVFPQ (pq_m sub-quantizers of 8 bits: pq_m bytes per item);
- ``hnsw``: IndexHNSWFlat, M links per node, ef_construction / ef_search beam widths.

The model interface is described in mmf_fashion/retrieval/__init__.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from mmf_fashion.metrics.ranking import chunked_topk
from mmf_fashion.retrieval.gallery import embed_in_batches
from mmf_fashion.retrieval.images import H5Image, close_h5_files, default_transform, describe_item, load_images
from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError, safe_torch_load

FORMAT = "mmf-fashion-index"
FORMAT_VERSION = 2  # 2: kind, params and queries; version 1 files load as kind "flat"
BACKENDS = ("auto", "faiss", "torch")
MODALITIES = ("image", "text")
KINDS = ("flat", "ivf", "hnsw")
QUERY_KINDS = ("text", "image", "composed")
# which keys each kind records (and accepts); every other key is an error naming these
PARAM_KEYS = {
    "flat": (),
    "ivf": ("nlist", "nprobe", "pq_m", "pq_bits", "train_size", "trained_on", "seed"),
    "hnsw": ("M", "ef_construction", "ef_search"),
}
MIN_POINTS_PER_LIST = 39  # faiss's k-means wants at least 39 training points per centroid


class RetrievalError(ValueError):
    """A user-facing problem with an index, a query or a model (the CLI prints it)."""


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    from mmf_fashion.utils.optional import require

    return require("faiss", "an approximate (ivf / hnsw) or faiss flat index")


def _normalize(embeddings: torch.Tensor) -> torch.Tensor:
    embeddings = embeddings.detach().float().cpu()
    return torch.nn.functional.normalize(embeddings, dim=1).contiguous()


def meta_path_of(path: Union[str, Path]) -> Path:
    return Path(str(path) + ".json")


# ------------------------------------------------------------------ parameters
def default_params(kind: str, n: int, dim: int, given: Optional[Dict] = None) -> Dict:
    """The parameters of a `kind` index over n items of dimension dim: `given`
    (None values ignored) over these defaults:

    - ivf: nlist = round(4 * sqrt(n)), at most n // 39 (39 training points per
      list) and at least 1; nprobe = round(sqrt(nlist)) (about 1/sqrt(nlist) of
      the items scanned); train_size = min(n, max(64 * nlist, 9984 with pq_m))
      items drawn with `seed` 0 train the lists; pq_m None (IVF-Flat), pq_bits 8.
    - hnsw: M = 32, ef_construction = 80, ef_search = 64.
    - flat: no parameters.
    """
    if kind not in KINDS:
        raise RetrievalError(f"index kind must be one of {KINDS}, got {kind!r}")
    given = {key: value for key, value in (given or {}).items() if value is not None}
    unknown = sorted(set(given) - set(PARAM_KEYS[kind]))
    if unknown:
        raise RetrievalError(f"index kind {kind!r}: unknown parameter(s) {unknown}; it takes {list(PARAM_KEYS[kind])}")
    if kind == "flat":
        return {}
    if kind == "hnsw":
        params = {"M": 32, "ef_construction": 80, "ef_search": 64, **given}
        for key in ("M", "ef_construction", "ef_search"):
            _positive(kind, key, params[key])
        return params
    nlist = int(given.get("nlist") or max(1, min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_LIST)))
    pq_m = given.get("pq_m")
    params = {
        "nlist": nlist,
        "nprobe": min(nlist, max(1, round(math.sqrt(nlist)))),
        "pq_m": pq_m,
        "pq_bits": 8,
        "seed": 0,
    }
    params.update(given)
    params["train_size"] = int(given.get("train_size") or min(n, max(64 * nlist, 39 * 256 if pq_m else 0)))
    for key in ("nlist", "nprobe", "train_size"):
        _positive(kind, key, params[key])
    if pq_m is not None:
        _positive(kind, "pq_m", pq_m)
        if dim % int(pq_m):
            divisors = [m for m in (4, 8, 16, 32, 64) if dim % m == 0]
            raise RetrievalError(f"ivf: pq_m={pq_m} does not divide the dimension {dim}; use one of {divisors}")
    return params


def _positive(kind: str, key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RetrievalError(f"index kind {kind!r}: {key} must be a positive integer, got {value!r}")


def _new_faiss_index(kind: str, dim: int, params: Dict):
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if params.get("pq_m"):
        index = faiss.IndexIVFPQ(
            quantizer, dim, params["nlist"], params["pq_m"], params["pq_bits"], faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True  # the index keeps its quantizer alive (and frees it)
    quantizer.this.disown()
    index.nprobe = params["nprobe"]
    return index


def _train(faiss_index, kind: str, params: Dict, embeddings: torch.Tensor) -> Dict:
    """Train an IVF index on `train_size` items drawn with `seed`; returns the
    parameters with trained_on (how many items trained it)."""
    if kind != "ivf" or faiss_index.is_trained:
        return params
    n = embeddings.shape[0]
    needed = params["nlist"] if not params.get("pq_m") else max(params["nlist"], 2 ** params["pq_bits"])
    if n < needed:
        raise RetrievalError(
            f"ivf index: {n} items cannot train {params['nlist']} lists"
            + (f" and {2 ** params['pq_bits']} PQ centroids" if params.get("pq_m") else "")
            + "; give a smaller nlist (--nlist), drop --pq-m, or use --kind flat"
        )
    size = min(n, params["train_size"])
    if size < n:
        chosen = torch.randperm(n, generator=torch.Generator().manual_seed(params["seed"]))[:size]
        sample = embeddings[chosen.sort().values]
    else:
        sample = embeddings
    faiss_index.train(sample.numpy())
    return {**params, "trained_on": int(size)}


def _search_parameters(kind: str, params: Dict, k: int, nprobe: Optional[int], ef: Optional[int]):
    faiss = _faiss()
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(nprobe or params["nprobe"]))
    if kind == "hnsw":  # the beam is never narrower than k
        return faiss.SearchParametersHNSW(efSearch=max(int(ef or params["ef_search"]), k))
    return None


def build_faiss_index(embeddings, kind: str, params: Optional[Dict] = None):
    """(faiss index, parameters) over L2-normalised (N, D) float32 rows (a
    torch tensor or a numpy array): default_params over `params`, trained
    (ivf) and filled. The benchmark builds through here too."""
    if torch.is_tensor(embeddings):
        embeddings = embeddings.detach().float().cpu().contiguous()
    else:
        embeddings = torch.from_numpy(embeddings)
    n, dim = embeddings.shape
    params = default_params(kind, n, dim, params)
    index = _new_faiss_index(kind, dim, params)
    params = _train(index, kind, params, embeddings)
    if n:
        index.add(embeddings.numpy())
    return index, params


def faiss_search(
    index, kind: str, params: Dict, queries, k: int, nprobe: Optional[int] = None, ef: Optional[int] = None
):
    """(scores, rows) numpy arrays (Q, k) of a faiss index built by build_faiss_index;
    nprobe / ef override the recorded values for this call only."""
    extra = _search_parameters(kind, params, k, nprobe, ef)
    if extra is None:
        return index.search(queries, k)
    return index.search(queries, k, params=extra)


def item_name(item: Dict) -> str:
    """What names an item (duplicates are refused on add): its path, else its text."""
    return str(item.get("path", item.get("text", "")))


# ------------------------------------------------------------------ models
def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(model) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model, checkpoint: Optional[Union[str, Path]] = None) -> Dict:
    """{"checkpoint_sha256", "hash_of"}: the checkpoint file's sha256, or the
    state dict's (state_dict_sha256) when the model was built without one."""
    if checkpoint:
        return {"checkpoint_sha256": file_sha256(checkpoint), "hash_of": "checkpoint file"}
    return {"checkpoint_sha256": state_dict_sha256(model), "hash_of": "state dict"}


def check_same_model(index_info: Dict, query_info: Dict, where: str = "the index") -> None:
    """Raise when the query model is not the one the index was built with
    (another name or another checkpoint hash); indexes without a hash pass."""
    stored, given = index_info.get("checkpoint_sha256"), query_info.get("checkpoint_sha256")
    stored_name, given_name = index_info.get("name"), query_info.get("name")
    if (stored and given and stored != given) or (stored_name and given_name and stored_name != given_name):
        raise RetrievalError(
            f"{where} was built with model '{stored_name}' (config {index_info.get('config')}, "
            f"{index_info.get('hash_of', 'checkpoint')} sha256 {stored}) but the query model is '{given_name}' "
            f"(config {query_info.get('config')}, {query_info.get('hash_of', 'checkpoint')} sha256 {given}): "
            "its embeddings are not comparable; search without --model/--checkpoint/--config to use the stored "
            "model, or rebuild the index with this one (mmf-fashion index build)"
        )


def model_query_kinds(model) -> List[str]:
    """The query kinds a model can embed: text, image, composed."""
    methods = {"text": "embed_texts", "image": "embed_images", "composed": "embed_composed"}
    return [kind for kind, method in methods.items() if callable(getattr(model, method, None))]


# ------------------------------------------------------------------ the index
class EmbeddingIndex:
    """L2-normalised embeddings (N, D) + one item dict per row; inner-product search.

    kind: flat | ivf | hnsw (faiss; the torch backend is flat only); params:
    the kind's parameters over default_params(kind, N, D). queries: the query
    kinds the index answers (text, image, composed), None = any.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        items: Sequence[Dict],
        *,
        modality: str,
        model_info: Optional[Dict] = None,
        backend: str = "auto",
        kind: str = "flat",
        params: Optional[Dict] = None,
        queries: Optional[Sequence[str]] = None,
    ):
        if embeddings.dim() != 2 or embeddings.shape[0] != len(items):
            raise RetrievalError(f"index: {len(items)} items but embeddings of shape {tuple(embeddings.shape)}")
        backend = self.check_settings(modality, backend, kind, queries)
        self.items = [dict(item) for item in items]
        self.modality = modality
        self.model_info = dict(model_info or {})
        self.backend = backend
        self.kind = kind
        self.queries = list(queries) if queries is not None else None
        embeddings = _normalize(embeddings)
        self._dim = int(embeddings.shape[1])
        self.params = default_params(kind, len(self.items), self._dim, params)
        self._tensor: Optional[torch.Tensor] = None
        self._faiss_index = None
        if backend == "torch":
            self._tensor = embeddings
        else:
            self._faiss_index, self.params = build_faiss_index(embeddings, kind, self.params)

    @staticmethod
    def check_settings(modality, backend, kind, queries) -> str:
        """The backend that `backend` means for this kind ("auto" resolved), or a
        RetrievalError naming the bad setting (cheap: run it before embedding)."""
        if modality not in MODALITIES:
            raise RetrievalError(f"index: modality must be one of {MODALITIES}, got {modality!r}")
        if backend not in BACKENDS:
            raise RetrievalError(f"index: backend must be one of {BACKENDS}, got {backend!r}")
        if kind not in KINDS:
            raise RetrievalError(f"index: kind must be one of {KINDS}, got {kind!r}")
        if queries is not None and (not queries or set(queries) - set(QUERY_KINDS)):
            raise RetrievalError(f"index: queries must be some of {QUERY_KINDS}, got {list(queries)}")
        if backend == "auto":
            backend = "faiss" if faiss_available() or kind != "flat" else "torch"
        if backend == "torch" and kind != "flat":
            raise RetrievalError(f"index: kind {kind!r} needs the faiss backend; the torch backend is flat only")
        if backend == "faiss" and not faiss_available():
            raise RetrievalError(
                f"index: kind {kind!r} with the faiss backend, but faiss does not import "
                "(pip install 'mmf-fashion[index]', or --backend torch for an exact index)"
            )
        return backend

    @classmethod
    def _assemble(cls, stored, items, meta) -> "EmbeddingIndex":
        """An index around a loaded tensor or faiss index (no re-adding)."""
        index = cls.__new__(cls)
        index.items = [dict(item) for item in items]
        index.modality = meta["modality"]
        index.model_info = dict(meta.get("model") or {})
        index.backend = meta["backend"]
        index.kind = meta.get("kind", "flat")
        index.params = dict(meta.get("params") or {})
        index.queries = meta.get("queries")
        index._dim = int(meta["dim"])
        index._tensor = stored if torch.is_tensor(stored) else None
        index._faiss_index = None if torch.is_tensor(stored) else stored
        return index

    def __len__(self) -> int:
        return len(self.items)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def embeddings(self) -> torch.Tensor:
        """(N, D) float32: the stored vectors (ivf with pq_m: their PQ reconstruction)."""
        if self._tensor is not None:
            return self._tensor
        stored = self._faiss_index
        if not stored.ntotal:
            return torch.zeros(0, self._dim)
        if self.kind == "ivf":
            stored.make_direct_map()  # reconstruction by id needs the id -> list map
        return torch.from_numpy(stored.reconstruct_n(0, stored.ntotal))

    def describe(self) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.params.items() if value is not None)
        return f"{self.kind} ({self.backend}{', ' + settings if settings else ''})"

    def search_embeddings(
        self, queries: torch.Tensor, k: int, *, nprobe: Optional[int] = None, ef: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores (Q, k'), rows (Q, k')) of the k' = min(k, N) nearest rows;
        nprobe (ivf) and ef (hnsw) default to the index's recorded values.
        An approximate index may return fewer than k' rows: row -1 pads them."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise RetrievalError(
                f"query embeddings of shape {tuple(queries.shape)} do not match the index dimension "
                f"{self.dim} (was the index built with another model?)"
            )
        for name, value, kind in (("nprobe", nprobe, "ivf"), ("ef", ef, "hnsw")):
            if value is not None and self.kind != kind:
                raise RetrievalError(f"{name} applies to {kind} indexes; this index is {self.describe()}")
            if value is not None and (not isinstance(value, int) or value < 1):
                raise RetrievalError(f"{name} must be a positive integer, got {value!r}")
        queries = _normalize(queries)
        k = min(int(k), len(self))
        if k < 1:
            return torch.empty(queries.shape[0], 0), torch.empty(queries.shape[0], 0, dtype=torch.long)
        if self._faiss_index is None:
            return chunked_topk(queries, self._tensor, k)
        scores, rows = faiss_search(self._faiss_index, self.kind, self.params, queries.numpy(), k, nprobe, ef)
        return torch.from_numpy(scores), torch.from_numpy(rows).long()

    def add(self, embeddings: torch.Tensor, items: Sequence[Dict]) -> None:
        """Append rows without a rebuild (IVF: into the lists trained at build).
        An item whose name (item_name) is in the index, or twice in `items`, is refused."""
        if embeddings.dim() != 2 or embeddings.shape[0] != len(items):
            raise RetrievalError(f"add: {len(items)} items but embeddings of shape {tuple(embeddings.shape)}")
        if embeddings.shape[1] != self.dim:
            raise RetrievalError(
                f"add: embeddings of dimension {embeddings.shape[1]}, the index holds {self.dim} "
                "(were they made with another model?)"
            )
        seen = {item_name(item): row for row, item in enumerate(self.items)}
        for number, item in enumerate(items):
            name = item_name(item)
            if name in seen:
                where = f"row {seen[name]} of the index" if seen[name] < len(self.items) else "the new items"
                raise RetrievalError(
                    f"add: item {number} '{name}' is already in {where}; an index holds each item once: "
                    "leave it out of the items to add (to replace it, rebuild the index)"
                )
            seen[name] = len(self.items) + number
        embeddings = _normalize(embeddings)
        if self._faiss_index is None:
            self._tensor = torch.cat([self._tensor, embeddings])
        else:
            self._faiss_index.add(embeddings.numpy())
        self.items.extend(dict(item) for item in items)

    def save(self, path: Union[str, Path]) -> Tuple[Path, Path]:
        """Write the index file and its `<path>.json` sidecar; returns both paths."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._faiss_index is not None:
            _faiss().write_index(self._faiss_index, str(path))
        else:
            torch.save({"embeddings": self._tensor}, path)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "backend": self.backend,
            "kind": self.kind,
            "params": self.params,
            "modality": self.modality,
            "queries": self.queries,
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
        embeddings file that needs full unpickling; refused otherwise. faiss
        files are read by faiss.read_index (no unpickling)."""
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
        kind = meta.setdefault("kind", "flat")  # version 1: always flat
        if kind not in KINDS:
            raise RetrievalError(f"{meta_path}: field 'kind' is {kind!r}, not one of {KINDS}")
        if meta["backend"] == "faiss":
            if not faiss_available():
                raise RetrievalError(
                    f"{path}: a faiss index, but faiss does not import here (pip install 'mmf-fashion[index]')"
                )
            try:
                stored = _faiss().read_index(str(path))
            except RuntimeError as error:
                raise RetrievalError(f"{path}: not a readable faiss index ({error})") from error
            expected = {"flat": ("IndexFlatIP",), "ivf": ("IndexIVFFlat", "IndexIVFPQ"), "hnsw": ("IndexHNSWFlat",)}[
                kind
            ]
            if type(stored).__name__ not in expected:
                raise RetrievalError(
                    f"{path}: holds a faiss {type(stored).__name__}, but {meta_path.name} says kind {kind!r} "
                    f"({' or '.join(expected)}); the two files do not belong together: rebuild the index"
                )
            shape = (int(stored.ntotal), int(stored.d))
        elif meta["backend"] == "torch":
            try:
                stored = safe_torch_load(str(path), allow_unsafe=allow_unsafe)
            except UnsafeCheckpointError as error:  # an index may come from anyone: never unpickle it silently
                raise RetrievalError(str(error)) from error
            if not isinstance(stored, dict) or not torch.is_tensor(stored.get("embeddings")):
                raise RetrievalError(f"{path}: expected a torch file {{'embeddings': (N, D) tensor}}")
            stored = stored["embeddings"].float()
            shape = tuple(stored.shape)
            if kind != "flat":
                raise RetrievalError(f"{meta_path}: a torch index is flat, the sidecar says kind {kind!r}")
        else:
            raise RetrievalError(f"{meta_path}: unknown backend {meta['backend']!r}")
        if shape != (meta["count"], meta["dim"]) or len(meta["items"]) != meta["count"]:
            raise RetrievalError(
                f"{path}: holds {shape} embeddings and {len(meta['items'])} items, "
                f"the sidecar says ({meta['count']}, {meta['dim']})"
            )
        params = meta.get("params") or {}
        unknown = sorted(set(params) - set(PARAM_KEYS[kind]))
        if unknown:
            raise RetrievalError(f"{meta_path}: unknown {kind} parameter(s) {unknown}")
        return cls._assemble(stored, meta["items"], meta)


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


def _check_image_files(items: Sequence) -> None:
    """A missing image file is named with its item number before any embedding starts."""
    for number, item in enumerate(items):
        if not isinstance(item, H5Image) and not Path(item).is_file():
            raise RetrievalError(
                f"gallery item {number}: image {item} not found; fix or remove the path "
                "(a list file's paths are relative to the list file)"
            )


def embed_gallery(
    model,
    items: Sequence,
    *,
    modality: str = "image",
    batch_size: int = 32,
    progress: bool = True,
    image_size: int = 224,
    transform: Optional[Callable] = None,
    records: Optional[Sequence[Dict]] = None,
) -> Tuple[torch.Tensor, List[Dict]]:
    """(embeddings (N, D), item dicts) of a gallery of image paths / H5Image
    rows or texts; records: extra fields per item (e.g. product ids)."""
    if modality not in MODALITIES:
        raise RetrievalError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if len(items) == 0:
        raise RetrievalError("the gallery is empty")
    if records is not None and len(records) != len(items):
        raise RetrievalError(f"{len(records)} records for {len(items)} gallery items")
    if modality == "image":
        embed = _require(model, "embed_images", "to index images")
        _check_image_files(items)
        transform = transform or model_image_transform(model, image_size)
        h5_files: Dict = {}  # HDF5 galleries: one handle per file for the whole build
        try:
            embeddings = embed_in_batches(
                embed,
                list(items),
                batch_size=batch_size,
                progress=progress,
                desc="index images",
                prepare=lambda batch: load_images(batch, transform, h5_files),
            )
        finally:
            close_h5_files(h5_files)
        rows = [{"path": describe_item(p)} for p in items]
    else:
        embed = _require(model, "embed_texts", "to index texts")
        embeddings = embed_in_batches(embed, list(items), batch_size=batch_size, progress=progress, desc="index texts")
        rows = [{"text": t} for t in items]
    if records is not None:
        rows = [{**extra, **row} for row, extra in zip(rows, records)]
    return embeddings, rows


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
    kind: str = "flat",
    params: Optional[Dict] = None,
    queries: Optional[Sequence[str]] = None,
) -> EmbeddingIndex:
    """Embed a gallery (image paths or images.H5Image rows, or texts) with
    the model and index it; images are loaded batch by batch.

    records: optional extra fields per item (e.g. product ids) kept in the index.
    kind / params: see default_params. queries: the query kinds the index
    answers (default: those the model can embed, model_query_kinds).
    """
    EmbeddingIndex.check_settings(modality, backend, kind, queries)  # before the (long) embedding
    embeddings, rows = embed_gallery(
        model,
        items,
        modality=modality,
        batch_size=batch_size,
        progress=progress,
        image_size=image_size,
        transform=transform,
        records=records,
    )
    return EmbeddingIndex(
        embeddings,
        rows,
        modality=modality,
        model_info=model_info,
        backend=backend,
        kind=kind,
        params=params,
        queries=list(queries) if queries is not None else model_query_kinds(model),
    )


def add_items(
    model,
    index: EmbeddingIndex,
    items: Sequence,
    *,
    modality: Optional[str] = None,
    batch_size: int = 32,
    progress: bool = True,
    image_size: int = 224,
    transform: Optional[Callable] = None,
    records: Optional[Sequence[Dict]] = None,
) -> int:
    """Embed new gallery items with the index's model and append them (no
    rebuild); returns how many were added. The items must be of the index's
    modality and new to it (checked before anything is embedded)."""
    if modality is not None and modality != index.modality:
        raise RetrievalError(
            f"the index holds {index.modality}s; {modality}s cannot be added to it "
            f"(add {index.modality}s, or build another index for the {modality}s)"
        )
    names = [describe_item(item) if index.modality == "image" else str(item) for item in items]
    known = {item_name(item) for item in index.items}
    for number, name in enumerate(names):
        if name in known or name in names[:number]:
            raise RetrievalError(
                f"add: item {number} '{name}' is already in the index"
                + (" (twice in the items to add)" if name in names[:number] else "")
                + "; an index holds each item once: leave it out of the items to add"
            )
    embeddings, rows = embed_gallery(
        model,
        items,
        modality=index.modality,
        batch_size=batch_size,
        progress=progress,
        image_size=image_size,
        transform=transform,
        records=records,
    )
    index.add(embeddings, rows)
    return len(rows)


def query_kind(texts, images) -> str:
    has_texts = bool(texts) if not isinstance(texts, str) else True
    if has_texts and images is not None:
        return "composed"
    return "text" if has_texts else "image"


def check_query_kind(index: EmbeddingIndex, kind: str, where: str = "the index") -> None:
    """Raise when the index does not answer `kind` queries (recorded at build)."""
    if index.queries is not None and kind not in index.queries:
        flags = {"text": "--text", "image": "--image", "composed": "--image with --text"}
        given = ", ".join(flags[q] for q in index.queries)
        raise RetrievalError(
            f"{where} holds {index.modality}s and answers {' / '.join(index.queries)} queries "
            f"(recorded at build); a {kind} query was given: query with {given}, "
            f"or rebuild the index with --queries including {kind}"
        )


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
    nprobe: Optional[int] = None,
    ef: Optional[int] = None,
) -> List[List[Dict]]:
    """One ranked list per query: {"rank", "score", "row", **the row's item}.
    nprobe (ivf) / ef (hnsw): default the index's recorded values."""
    if texts or images is not None:
        check_query_kind(index, query_kind(texts, images))
    queries = embed_queries(model, texts=texts, images=images)
    scores, rows = index.search_embeddings(queries, k, nprobe=nprobe, ef=ef)
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
