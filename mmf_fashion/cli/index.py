"""`mmf-fashion index build | search`: a retrieval index from a trained model.

Cheatsheet::

    # embed a gallery of images (a folder, recursive, or a list file) and save it
    mmf-fashion index build --checkpoint save/align_itr/align_final.pth \
        --images data/synthetic/fashiongen/images/val --out runs/val.index
    # or a gallery of texts (one per line), any registered model by name
    mmf-fashion index build --model fashionvil --config projects/fashionvil/configs/itr.yaml \
        --texts captions.txt --out runs/captions.index --set head=contrastive
    # or a data set's split from the data directory (published layout)
    mmf-fashion index build --config projects/align/configs/itr.yaml --model align \
        --dataset fashiongen --split val --checkpoint save/align_itr/align_final.pth --out gallery.index

    # an approximate index for a large catalogue (faiss): IVF or HNSW, defaults from its size
    mmf-fashion index build --checkpoint save/align_itr/align_final.pth --images catalogue/ \
        --out runs/catalogue.index --kind ivf            # or --kind ivf --pq-m 32, --kind hnsw

    # search: text, image, or image + modification text (TGIR, embed_composed)
    mmf-fashion index search --index runs/val.index --text "red striped dress" --top-k 5
    mmf-fashion index search --index runs/val.index --image query.jpg -k 5
    mmf-fashion index search --index runs/val.index --image ref.jpg --text "is blue" --json
    mmf-fashion index search --index runs/catalogue.index --text "red dress" --nprobe 64   # --ef for hnsw

    # add items to an existing index (same model; flat, ivf and hnsw; names must be new)
    mmf-fashion index add --index runs/catalogue.index --images new_arrivals/

The model is rebuilt for `search` and `add` from what `build` stored beside
the index (name, checkpoint, config, overrides) unless --model/--checkpoint/
--config are given again; either way its checkpoint sha256 (or its state
dict's, without a checkpoint) must be the one recorded at build.
Model interface: mmf_fashion/retrieval/__init__.py.

Checkpoints and torch index files are read weights-only: a file that needs
full unpickling (which can run code) is refused unless --allow-unsafe-load
is given, on each command (an index does not remember it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mmf_fashion.cli import add_allow_unsafe_load


def _add_model_arguments(parser, required_help: str) -> None:
    parser.add_argument("--model", help=f"registered model name ({required_help})")
    parser.add_argument("--checkpoint", help="MMF checkpoint (.pth/.ckpt with a 'model' entry) or a state dict")
    parser.add_argument("--config", help="a YAML with model_config.<name> (a project config works)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override in the model config (repeatable), e.g. --set embed_dim=64",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_allow_unsafe_load(parser)
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square size of the default image transform (build: 224; search: as built)",
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _load_model(name, config, overrides, checkpoint, device, allow_unsafe):
    """(model, info): the index's model config, then the one model builder
    (runtime.build_model_from_config), the checkpoint read once."""
    from mmf_fashion.retrieval.model_io import resolve_model_config
    from mmf_fashion.runtime import build_model_from_config

    model_config, info, state = resolve_model_config(
        name, config=config, overrides=overrides, checkpoint=checkpoint, allow_unsafe=allow_unsafe
    )
    model = build_model_from_config(
        model_config, checkpoint=checkpoint, device=device, allow_unsafe=allow_unsafe, checkpoint_state=state
    )
    return model, info


def _gallery(args):
    """(items, modality, records) of --images / --texts / --dataset."""
    from mmf_fashion.retrieval.catalogue import dataset_gallery
    from mmf_fashion.retrieval.images import list_images, read_lines

    if args.images:
        return list_images(args.images), "image", None
    if args.texts:
        return read_lines(args.texts), "text", None
    items, records = dataset_gallery(
        args.dataset, args.split, args.data_dir, args.modality, args.polyvore_version, args.fashiongen_format
    )
    return items, args.modality, records


def _fingerprinted_model(args, stored=None):
    """(model, info with its checkpoint hash); with `stored` (an index's model
    info) the arguments default to it and the model must be the same one."""
    from mmf_fashion.retrieval.index import check_same_model, model_fingerprint

    stored = stored or {}
    overrides = args.overrides or stored.get("overrides") or []
    # the sidecar may name any checkpoint: it is read as safely as one given here
    checkpoint = args.checkpoint or stored.get("checkpoint")
    model, info = _load_model(
        args.model or stored.get("name"),
        args.config or stored.get("config"),
        overrides,
        checkpoint,
        args.device,
        args.allow_unsafe_load,
    )
    info.update(model_fingerprint(model, checkpoint))
    if stored:
        check_same_model(stored, info, where=f"the index {args.index}")
    return model, info


def _index_params(args):
    kind = args.kind
    given = {
        "flat": {},
        "ivf": {"nlist": args.nlist, "nprobe": args.nprobe, "pq_m": args.pq_m},
        "hnsw": {"M": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef},
    }[kind]
    for flag, value, owner in (
        ("--nlist", args.nlist, "ivf"),
        ("--nprobe", args.nprobe, "ivf"),
        ("--pq-m", args.pq_m, "ivf"),
        ("--hnsw-m", args.hnsw_m, "hnsw"),
        ("--ef-construction", args.ef_construction, "hnsw"),
        ("--ef", args.ef, "hnsw"),
    ):
        if value is not None and owner != kind:
            raise ValueError(f"{flag} applies to --kind {owner}, not --kind {kind}")
    return kind, given


def run_build(args) -> int:
    from mmf_fashion.retrieval.index import EmbeddingIndex, RetrievalError, build_index
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError

    try:
        kind, params = _index_params(args)
        queries = [q.strip() for q in args.queries.split(",") if q.strip()] if args.queries else None
        EmbeddingIndex.check_settings(args.modality, args.backend, kind, queries)  # before any model work
        items, modality, records = _gallery(args)
        model, info = _fingerprinted_model(args)
        info["image_size"] = args.image_size or 224
        index = build_index(
            model,
            items,
            modality=modality,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            image_size=info["image_size"],
            backend=args.backend,
            model_info=info,
            records=records,
            kind=kind,
            params=params,
            queries=queries,
        )
        index_path, meta_path = index.save(args.out)
    except (RetrievalError, FileNotFoundError, ValueError, UnsafeCheckpointError) as error:
        return _fail(str(error))
    print(
        f"indexed {len(index)} {modality}s with '{info['name']}' ({index.dim}-d, {index.describe()}) "
        f"-> {index_path} (+ {meta_path.name})"
    )
    return 0


def run_add(args) -> int:
    from mmf_fashion.retrieval.index import EmbeddingIndex, RetrievalError, add_items
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError

    try:
        index = EmbeddingIndex.load(args.index, allow_unsafe=args.allow_unsafe_load)
        items, modality, records = _gallery(args)
        if modality != index.modality:
            raise RetrievalError(
                f"the index {args.index} holds {index.modality}s; {len(items)} {modality}s cannot be added to it "
                f"(give {'--images' if index.modality == 'image' else '--texts'}, or build another index)"
            )
        model, _ = _fingerprinted_model(args, index.model_info)
        before = len(index)
        added = add_items(
            model,
            index,
            items,
            modality=modality,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            image_size=args.image_size or index.model_info.get("image_size") or 224,
            records=records,
        )
        index_path, _ = index.save(args.out or args.index)
    except (RetrievalError, FileNotFoundError, ValueError, UnsafeCheckpointError) as error:
        return _fail(str(error))
    print(f"added {added} {modality}s to {before} ({index.describe()}) -> {index_path}")
    return 0


def run_search(args) -> int:
    from mmf_fashion.retrieval.images import default_transform, load_images
    from mmf_fashion.retrieval.index import EmbeddingIndex, RetrievalError, check_query_kind, query_kind, search
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError

    if not args.text and not args.image:
        return _fail("give --text, --image, or both")
    try:
        index = EmbeddingIndex.load(args.index, allow_unsafe=args.allow_unsafe_load)
        check_query_kind(index, query_kind(args.text, args.image), where=f"the index {args.index}")
        if args.image and not Path(args.image).is_file():
            raise RetrievalError(f"--image {args.image}: query image not found")
        model, _ = _fingerprinted_model(args, index.model_info)
        images = None
        if args.image:
            own = getattr(model, "image_transform", None)
            size = args.image_size or index.model_info.get("image_size") or 224
            transform = own() if callable(own) else default_transform(size)
            images = load_images([args.image], transform)
        hits = search(
            model,
            index,
            texts=[args.text] if args.text else None,
            images=images,
            k=args.k,
            nprobe=args.nprobe,
            ef=args.ef,
        )[0]
    except (RetrievalError, FileNotFoundError, ValueError, UnsafeCheckpointError) as error:
        return _fail(str(error))
    if args.json:
        print(json.dumps(hits, indent=1))
        return 0
    query = " + ".join(part for part in (args.image, repr(args.text) if args.text else None) if part)
    print(f"query: {query}  ({len(index)} {index.modality}s in {args.index})")
    for hit in hits:
        what = hit.get("path") or hit.get("text")
        print(f"{hit['rank']:>4}  {hit['score']:+.4f}  {what}")
    return 0


def _add_gallery_arguments(parser) -> None:
    gallery = parser.add_mutually_exclusive_group(required=True)
    gallery.add_argument("--images", help="folder of images (recursive) or a file listing image paths")
    gallery.add_argument("--texts", help="text file, one gallery text per line")
    gallery.add_argument(
        "--dataset",
        choices=("fashiongen", "fashioniq", "polyvore_ocir"),
        help="a data set's split under --data-dir (published layout)",
    )
    parser.add_argument("--split", default="val", help="with --dataset: train | val | test")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MMF_FASHION_DATA_DIR", "data/synthetic"),
        help="with --dataset (default $MMF_FASHION_DATA_DIR or data/synthetic)",
    )
    parser.add_argument(
        "--modality",
        choices=("image", "text"),
        default="image",
        help="with --dataset fashiongen: index images or product texts",
    )
    parser.add_argument("--polyvore-version", choices=("nondisjoint", "disjoint"), default="nondisjoint")
    parser.add_argument(
        "--format",
        dest="fashiongen_format",
        choices=("auto", "json", "h5"),
        default="auto",
        help="with --dataset fashiongen: which layout to read when both are there (default auto)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers) -> None:
    group = subparsers.add_parser("index", help="build, search and extend a retrieval index with a trained model")
    commands = group.add_subparsers(dest="index_command", required=True)

    build = commands.add_parser("build", help="embed a gallery of images or texts and save the index")
    _add_gallery_arguments(build)
    build.add_argument("--out", required=True, help="index file to write (a .json sidecar is written beside it)")
    build.add_argument(
        "--backend",
        choices=("auto", "faiss", "torch"),
        default="auto",
        help="auto: faiss when it imports, else a torch tensor file (flat only)",
    )
    build.add_argument(
        "--kind",
        choices=("flat", "ivf", "hnsw"),
        default="flat",
        help="flat: exact; ivf: inverted lists (k-means); hnsw: graph (default flat)",
    )
    build.add_argument("--nlist", type=int, help="ivf: lists (default round(4 sqrt(N)), at most N / 39)")
    build.add_argument(
        "--nprobe",
        type=int,
        help="ivf: lists scanned per query, recorded as the search default (default round(sqrt(nlist)))",
    )
    build.add_argument(
        "--pq-m",
        type=int,
        help="ivf: product quantisation with this many bytes per item "
        "(IVF-PQ; must divide the dimension); default none (IVF-Flat)",
    )
    build.add_argument("--hnsw-m", type=int, help="hnsw: links per node (default 32)")
    build.add_argument("--ef-construction", type=int, help="hnsw: build beam width (default 80)")
    build.add_argument("--ef", type=int, help="hnsw: search beam width recorded as the search default (default 64)")
    build.add_argument(
        "--queries",
        help="query kinds the index answers, comma separated: text, image, composed "
        "(default: those the model can embed)",
    )
    _add_model_arguments(build, "default: the checkpoint's or config's model")
    build.set_defaults(func=run_build)

    add = commands.add_parser("add", help="embed more items with the index's model and add them (no rebuild)")
    add.add_argument("--index", required=True, help="index file written by `index build`")
    _add_gallery_arguments(add)
    add.add_argument("--out", help="write the grown index here (default: over --index)")
    _add_model_arguments(add, "default: the one stored with the index")
    add.set_defaults(func=run_add)

    search = commands.add_parser("search", help="query an index with a text, an image, or both")
    search.add_argument("--index", required=True, help="index file written by `index build`")
    search.add_argument("--text", help="query text (with --image: the modification text)")
    search.add_argument("--image", help="query image (with --text: the reference image)")
    search.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="results to show (default 10)")
    search.add_argument("--nprobe", type=int, help="ivf: lists to scan (default: the one recorded at build)")
    search.add_argument("--ef", type=int, help="hnsw: search beam width (default: the one recorded at build)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_model_arguments(search, "default: the one stored with the index")
    search.set_defaults(func=run_search)
