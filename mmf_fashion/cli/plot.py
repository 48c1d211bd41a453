"""`mmf-fashion plot curves|embeddings|retrieval`: pictures of a run, to PNG.

Cheatsheet::

    # training losses, lr (train.jsonl) and evaluation metrics (metrics.jsonl)
    # against num_updates, one subplot per group; either file finds the other
    mmf-fashion plot curves save/align_itr/metrics.jsonl --out curves.png
    mmf-fashion plot curves save/align_itr --keys "train losses,lr" --out train.png
    mmf-fashion plot curves save/align_itr --keys loss,r@k_general --out curves.png
    mmf-fashion plot curves save/align_itr/metrics.jsonl --keys "*t2i_r@10" --out t2i.png

    # t-SNE of image, text (and fused) embeddings of one split, coloured by category
    mmf-fashion plot embeddings --config projects/align/configs/itr.yaml \\
        --model align --dataset fashiongen --checkpoint save/align_itr/align_final.pth \\
        --split val --max-items 400 --out tsne.png
    # trailing k=v pairs are MMF config overrides, as for mmf_run
    mmf-fashion plot embeddings --config my.yaml --model fashionvil --dataset fashiongen \\
        --out tsne.png env.data_dir=/data/fashion model_config.fashionvil.head=contrastive
    # a trusted checkpoint that is not weights-only (refused without the flag)
    mmf-fashion plot embeddings ... --checkpoint old_mmf.ckpt --allow-unsafe-load --out tsne.png

    # sampled queries beside their top-5 results, the correct item framed in green
    mmf-fashion plot retrieval --config projects/fashionvil/configs/tgir.yaml --model fashionvil \\
        --checkpoint save/fashionvil_tgir/fashionvil_final.pth --task tgir --queries 8 --out grid.png
    # itr: caption -> images (fashiongen); ocir: partial outfit -> items (polyvore_ocir);
    # --seed draws the queries at random instead of evenly spaced; --json keeps the ranked ids
    mmf-fashion plot retrieval --config projects/fashionvil/configs/itr.yaml --model fashionvil \\
        --checkpoint save/fashionvil_itr/fashionvil_final.pth --task itr --seed 1 --json grid.json --out grid.png

--keys takes comma-separated exact keys, family names ("loss",
"r@k_general") or globs ("val/*/r@k_general/t2i_*"). Embeddings come from
the model's retrieval interface (embed_images, embed_texts, embed_composed
for the fused panel) or, when it lacks one, from the image_embedding /
text_embedding / fused_embedding outputs of its eval-mode forward. The
drawing itself lives in mmf_fashion/visualize.py; the retrieval grid (its
queries, ranking and frames) in mmf_fashion/visualize_retrieval.py.
"""

from __future__ import annotations

import os
import sys

from mmf_fashion.cli import add_allow_unsafe_load

RESULT_FILES = ("metrics.jsonl", "train.jsonl")


def read_run_records(source: str):
    """(records, paths read): evaluations and training records of a run. The
    source is a save_dir, its metrics.jsonl or its train.jsonl; the other file
    beside it is read too when it exists (a run may not have evaluated yet)."""
    from mmf_fashion.visualize import PlotError, read_metrics_jsonl

    if os.path.isdir(source):
        folder, named = source, None
    else:
        folder, named = os.path.dirname(source) or ".", source
    paths = [named] if named else []
    if named is None or os.path.basename(named) in RESULT_FILES:
        paths += [
            os.path.join(folder, name)
            for name in RESULT_FILES
            if os.path.isfile(os.path.join(folder, name)) and os.path.join(folder, name) != named
        ]
    if not paths:
        raise PlotError(f"{source}: no {' or '.join(RESULT_FILES)} in it")
    records = []
    for path in paths:
        # a file named on the command line must hold records; a found one may still be empty
        records += read_metrics_jsonl(path, allow_empty=path != named)
    if not records:
        raise PlotError(f"{source}: no records (the run has not logged yet?)")
    return records, paths


def run_curves(args) -> int:
    from mmf_fashion.visualize import PlotError, plot_curves

    keys = [key.strip() for key in (args.keys or "").split(",") if key.strip()] or None
    try:
        records, paths = read_run_records(args.metrics)
        title = args.title or os.path.abspath(paths[0] if len(paths) == 1 else os.path.dirname(paths[0]))
        families = plot_curves(records, args.out, keys=keys, title=title)
    except PlotError as error:
        print(f"mmf-fashion plot curves: {error}", file=sys.stderr)
        return 2
    drawn = sum(len(family_keys) for family_keys in families.values())
    print(
        f"wrote {args.out}: {drawn} curve(s) from {len(records)} record(s) in {len(families)} panel(s) "
        f"({', '.join(families)})"
    )
    return 0


def run_embeddings(args) -> int:
    from mmf_fashion import runtime
    from mmf_fashion.datasets.common import BadSampleError
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError
    from mmf_fashion.visualize import PlotError, collect_embeddings, evenly_spaced, plot_embeddings

    try:
        config = runtime.load_config(args.config, args.model, args.dataset, args.overrides)
        dataset = runtime.build_split_dataset(config, args.dataset, args.split)
        # the flag, or checkpoint.allow_unsafe_load=true among the overrides (as for mmf_run)
        allow_unsafe = True if args.allow_unsafe_load else None
        model = runtime.build_model_from_config(
            config, checkpoint=args.checkpoint, device=args.device, allow_unsafe=allow_unsafe
        )
        indices = evenly_spaced(len(dataset), args.max_items)
        loader = runtime.split_loader(dataset, batch_size=args.batch_size, indices=indices)
        points_by_kind, labels = collect_embeddings(
            model,
            loader,
            label_key=args.label_key,
            fused=not args.no_fused,
            progress=not args.quiet,
        )
        names = label_names(args.dataset, args.label_key, dataset)
        title = f"{args.model} on {args.dataset}/{args.split} ({len(indices)} items)"
        plot_embeddings(
            points_by_kind, labels, args.out, label_names=names, seed=args.seed, perplexity=args.perplexity, title=title
        )
    except (PlotError, runtime.RuntimeSetupError, BadSampleError, FileNotFoundError, UnsafeCheckpointError) as error:
        print(f"mmf-fashion plot embeddings: {error}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{kind} {len(points)}" for kind, points in points_by_kind.items())
    print(f"wrote {args.out}: t-SNE of {kinds} point(s), {len(set(labels.tolist()))} {args.label_key} value(s)")
    return 0


def run_retrieval(args) -> int:
    import json

    from mmf_fashion import runtime
    from mmf_fashion.datasets.common import BadSampleError
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError
    from mmf_fashion.visualize import PlotError
    from mmf_fashion.visualize_retrieval import TASK_DATASETS, collect_retrieval, plot_retrieval_grid

    dataset_name = args.dataset or TASK_DATASETS[args.task]
    try:
        config = runtime.load_config(args.config, args.model, dataset_name, args.overrides)
        dataset = runtime.build_split_dataset(config, dataset_name, args.split)
        allow_unsafe = True if args.allow_unsafe_load else None
        model = runtime.build_model_from_config(
            config, checkpoint=args.checkpoint, device=args.device, allow_unsafe=allow_unsafe
        )
        rows = collect_retrieval(
            model,
            dataset,
            args.task,
            count=args.queries,
            k=args.k,
            seed=args.seed,
            batch_size=args.batch_size,
            config=config,
        )
        title = args.title or (
            f"{args.model} {args.task} on {dataset_name}/{args.split}: query, then the "
            f"top-{args.k} (green frame: the correct item)"
        )
        plot_retrieval_grid(rows, args.out, task=args.task, title=title)
    except (PlotError, runtime.RuntimeSetupError, BadSampleError, FileNotFoundError, UnsafeCheckpointError) as error:
        print(f"mmf-fashion plot retrieval: {error}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "task": args.task,
                    "dataset": dataset_name,
                    "split": args.split,
                    "k": args.k,
                    "queries": [row.to_json() for row in rows],
                },
                handle,
                indent=1,
            )
    found = sum(any(row.frames) for row in rows)
    print(
        f"wrote {args.out}: {len(rows)} {args.task} queries, top-{args.k}; the correct item is among them "
        f"for {found} of {len(rows)}" + (f"; ranked ids in {args.json}" if args.json else "")
    )
    return 0


def label_names(dataset_name: str, label_key: str, dataset=None):
    """{id: name} for the legend: what the builder registered as
    '<dataset>_<label>_names' (e.g. fashiongen_category_names), or the
    dataset's '<label>_names' attribute or vocabs[<label>].names; None when
    none exists (the legend then says "category <id>")."""
    from mmf.common.registry import registry

    label = label_key[: -len("_id")] if label_key.endswith("_id") else label_key
    vocabs = getattr(dataset, "vocabs", None)
    vocabulary = vocabs.get(label) if isinstance(vocabs, dict) else None
    candidates = [
        registry.get(f"{dataset_name}_{label}_names", no_warning=True),
        getattr(dataset, f"{label}_names", None),
        getattr(vocabulary, "names", None),  # fashiongen's LabelVocab
    ]
    for names in candidates:
        if not names:
            continue
        if isinstance(names, dict) or hasattr(names, "items"):
            return {int(key): str(value) for key, value in names.items()}
        return {index: str(name) for index, name in enumerate(names)}
    return None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="loss/metric curves, t-SNE embedding maps and retrieval grids, to PNG")
    commands = parser.add_subparsers(dest="command", required=True)

    curves = commands.add_parser("curves", help="training and metric curves from train.jsonl and metrics.jsonl")
    curves.add_argument(
        "metrics",
        metavar="METRICS_JSONL",
        help="a save_dir, or its metrics.jsonl or train.jsonl (the other file beside it is read too)",
    )
    curves.add_argument(
        "--keys",
        default=None,
        help="comma-separated keys, families (loss, r@k_general, 'train losses', lr) or globs; default: all",
    )
    curves.add_argument("--out", required=True, help="PNG file to write")
    curves.add_argument("--title", default=None, help="figure title (default: the metrics file)")
    curves.set_defaults(func=run_curves)

    embeddings = commands.add_parser("embeddings", help="t-SNE of image/text/fused embeddings coloured by category")
    embeddings.add_argument("--config", required=True, help="project YAML (as mmf_run config=...)")
    embeddings.add_argument("--model", required=True, help="registered model name, e.g. align")
    embeddings.add_argument("--dataset", required=True, help="registered dataset builder, e.g. fashiongen")
    embeddings.add_argument("--checkpoint", default=None, help="<model>_final.pth or a trainer checkpoint")
    embeddings.add_argument("--split", default="val", choices=("train", "val", "test"))
    embeddings.add_argument("--max-items", type=int, default=500, help="items taken evenly over the split")
    embeddings.add_argument("--batch-size", type=int, default=32)
    embeddings.add_argument("--label-key", default="category_id", help="sample key that colours the points")
    embeddings.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    add_allow_unsafe_load(embeddings)
    embeddings.add_argument("--perplexity", type=float, default=None, help="default: min(30, (N-1)/3)")
    embeddings.add_argument("--seed", type=int, default=0)
    embeddings.add_argument("--no-fused", action="store_true", help="skip the fused (image+text) embeddings")
    embeddings.add_argument("--quiet", action="store_true", help="no progress bar")
    embeddings.add_argument("--out", required=True, help="PNG file to write")
    embeddings.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="MMF config overrides")
    embeddings.set_defaults(func=run_embeddings)

    retrieval = commands.add_parser(
        "retrieval", help="sampled queries beside their top-k results, the correct item framed"
    )
    retrieval.add_argument("--config", required=True, help="project YAML (as mmf_run config=...)")
    retrieval.add_argument("--model", required=True, help="registered model name, e.g. fashionvil")
    retrieval.add_argument(
        "--task",
        required=True,
        choices=("itr", "tgir", "ocir"),
        help="itr: caption -> images (fashiongen); tgir: reference image + text -> image "
        "(fashioniq); ocir: partial outfit -> item (polyvore_ocir)",
    )
    retrieval.add_argument("--dataset", default=None, help="dataset builder (default: the task's)")
    retrieval.add_argument("--checkpoint", default=None, help="<model>_final.pth or a trainer checkpoint")
    retrieval.add_argument("--split", default="val", choices=("train", "val", "test"))
    retrieval.add_argument("--queries", type=int, default=8, help="queries drawn, one line each")
    retrieval.add_argument("-k", type=int, default=5, help="results shown per query")
    retrieval.add_argument(
        "--seed", type=int, default=None, help="draw the queries at random with this seed (default: evenly spaced)"
    )
    retrieval.add_argument("--batch-size", type=int, default=32)
    retrieval.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    add_allow_unsafe_load(retrieval)
    retrieval.add_argument("--title", default=None, help="figure title")
    retrieval.add_argument("--json", default=None, help="also write the ranked ids, ground truth and frames here")
    retrieval.add_argument("--out", required=True, help="PNG file to write")
    retrieval.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="MMF config overrides")
    retrieval.set_defaults(func=run_retrieval)
