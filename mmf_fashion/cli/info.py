"""`mmf-fashion info`: what this package registers into MMF, one line each."""

from __future__ import annotations


def run(args) -> int:
    import mmf_fashion
    import mmf_fashion.bridge

    mmf_fashion.bridge.install()
    from mmf.utils.env import setup_imports

    import mmf_fashion.plugin

    setup_imports()
    registered = mmf_fashion.plugin.ours()
    import torch
    import transformers

    mmf_version = mmf_fashion.bridge.installed_mmf_version()
    which = {"1.0.0rc10": "the PyPI release", "1.0.0rc12": "MMF main, from source"}.get(mmf_version, "unsupported")
    print(f"mmf-fashion {mmf_fashion.__version__}")
    print(f"mmf {mmf_version} ({which}), torch {torch.__version__}, transformers {transformers.__version__}")
    for kind in ("model", "builder", "metric", "processor", "trainer"):
        names = registered.get(kind, {})
        plural = kind + ("es" if kind.endswith("s") else "s")
        print(f"\n{plural} ({len(names)}):")
        for name, summary in sorted(names.items()):
            print(f"  {name:<28} {summary}")
    if args.weights:
        from mmf_fashion.released_weights import lines

        print("\nreleased weights each model accepts (a hub name or a local path):")
        for line in lines():
            print(f"  {line}")
    if args.patches:
        print(f"\nMMF {mmf_version} patches applied in this process:")
        for line in mmf_fashion.bridge.applied():
            print(f"  - {line}")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="list the registered models, builders, metrics, processors")
    parser.add_argument("--patches", action="store_true", help="also list the MMF compatibility patches applied")
    parser.add_argument(
        "--weights",
        action="store_true",
        help="also list the released weights each model accepts and the option naming them",
    )
    parser.set_defaults(func=run)
