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

    # search: text, image, or image + modification text (TGIR, embed_composed)
    mmf-fashion index search --index runs/val.index --text "red striped dress" --top-k 5
    mmf-fashion index search --index runs/val.index --image query.jpg -k 5
    mmf-fashion index search --index runs/val.index --image ref.jpg --text "is blue" --json

The model is rebuilt for `search` from what `build` stored beside the index
(name, checkpoint, config, overrides) unless --model/--checkpoint/--config
are given again. Model interface: mmf_fashion/retrieval/__init__.py.

Checkpoints and torch index files are read weights-only: a file that needs
full unpickling (which can run code) is refused unless --allow-unsafe-load
is given, on each command (an index does not remember it).
"""
from __future__ import annotations

import json
import os
import sys

from mmf_fashion.cli import add_allow_unsafe_load


def _add_model_arguments(parser, required_help: str) -> None:
    parser.add_argument("--model", help=f"registered model name ({required_help})")
    parser.add_argument("--checkpoint", help="MMF checkpoint (.pth/.ckpt with a 'model' entry) or a state dict")
    parser.add_argument("--config", help="a YAML with model_config.<name> (a project config works)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override in the model config (repeatable), e.g. --set embed_dim=64",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_allow_unsafe_load(parser)
    parser.add_argument(
        "--image-size", type=int, default=None,
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


def run_build(args) -> int:
    from mmf_fashion.retrieval.catalogue import dataset_gallery
    from mmf_fashion.retrieval.images import list_images, read_lines
    from mmf_fashion.retrieval.index import RetrievalError, build_index
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError

    records = None
    try:
        if args.images:
            items, modality = list_images(args.images), "image"
        elif args.texts:
            items, modality = read_lines(args.texts), "text"
        else:
            modality = args.modality
            items, records = dataset_gallery(
                args.dataset, args.split, args.data_dir, modality, args.polyvore_version, args.fashiongen_format
            )
        model, info = _load_model(
            args.model, args.config, args.overrides, args.checkpoint, args.device, args.allow_unsafe_load
        )
        info["image_size"] = args.image_size or 224
        index = build_index(
            model, items, modality=modality, batch_size=args.batch_size,
            progress=not args.no_progress, image_size=info["image_size"],
            backend=args.backend, model_info=info, records=records,
        )
        index_path, meta_path = index.save(args.out)
    except (RetrievalError, FileNotFoundError, ValueError, UnsafeCheckpointError) as error:
        return _fail(str(error))
    print(
        f"indexed {len(index)} {modality}s with '{info['name']}' ({index.dim}-d, {index.backend}) "
        f"-> {index_path} (+ {meta_path.name})"
    )
    return 0


def run_search(args) -> int:
    from mmf_fashion.retrieval.images import default_transform, load_images
    from mmf_fashion.retrieval.index import EmbeddingIndex, RetrievalError, search
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError

    if not args.text and not args.image:
        return _fail("give --text, --image, or both")
    try:
        index = EmbeddingIndex.load(args.index, allow_unsafe=args.allow_unsafe_load)
        stored = index.model_info
        overrides = args.overrides or stored.get("overrides") or []
        # the sidecar may name any checkpoint: it is read as safely as one given here
        model, _ = _load_model(
            args.model or stored.get("name"), args.config or stored.get("config"), overrides,
            args.checkpoint or stored.get("checkpoint"), args.device, args.allow_unsafe_load,
        )
        images = None
        if args.image:
            own = getattr(model, "image_transform", None)
            size = args.image_size or stored.get("image_size") or 224
            transform = own() if callable(own) else default_transform(size)
            images = load_images([args.image], transform)
        hits = search(model, index, texts=[args.text] if args.text else None, images=images, k=args.k)[0]
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


def add_parser(subparsers) -> None:
    group = subparsers.add_parser("index", help="build and search a retrieval index with a trained model")
    commands = group.add_subparsers(dest="index_command", required=True)

    build = commands.add_parser("build", help="embed a gallery of images or texts and save the index")
    gallery = build.add_mutually_exclusive_group(required=True)
    gallery.add_argument("--images", help="folder of images (recursive) or a file listing image paths")
    gallery.add_argument("--texts", help="text file, one gallery text per line")
    gallery.add_argument("--dataset", choices=("fashiongen", "fashioniq", "polyvore_ocir"),
                         help="a data set's split under --data-dir (published layout)")
    build.add_argument("--split", default="val", help="with --dataset: train | val | test")
    build.add_argument("--data-dir", default=os.environ.get("MMF_FASHION_DATA_DIR", "data/synthetic"),
                       help="with --dataset (default $MMF_FASHION_DATA_DIR or data/synthetic)")
    build.add_argument("--modality", choices=("image", "text"), default="image",
                       help="with --dataset fashiongen: index images or product texts")
    build.add_argument("--polyvore-version", choices=("nondisjoint", "disjoint"), default="nondisjoint")
    build.add_argument("--format", dest="fashiongen_format", choices=("auto", "json", "h5"), default="auto",
                       help="with --dataset fashiongen: which layout to read when both are there (default auto)")
    build.add_argument("--out", required=True, help="index file to write (a .json sidecar is written beside it)")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--backend", choices=("auto", "faiss", "torch"), default="auto",
                       help="auto: faiss when it imports, else a torch tensor file")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_arguments(build, "default: the checkpoint's or config's model")
    build.set_defaults(func=run_build)

    search = commands.add_parser("search", help="query an index with a text, an image, or both")
    search.add_argument("--index", required=True, help="index file written by `index build`")
    search.add_argument("--text", help="query text (with --image: the modification text)")
    search.add_argument("--image", help="query image (with --text: the reference image)")
    search.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="results to show (default 10)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_model_arguments(search, "default: the one stored with the index")
    search.set_defaults(func=run_search)
