"""`mmf-fashion convert <model>`: released checkpoints of other code bases -> this package's layout.

Cheatsheet::

    mmf-fashion convert fashionvil --from fashionvil_official.pth --out fashionvil_ours.pth
    mmf_run ... model=fashionvil checkpoint.resume_file=fashionvil_ours.pth checkpoint.resume_pretrained=True
    mmf-fashion convert xvlm --from 4m_base_model_state_step_199999.th --out xvlm_ours.pth

The mapping and where the maths differ: docs/models/fashionvil_checkpoints.md,
docs/models/xvlm_checkpoints.md.
Files are read weights-only unless --allow-unsafe-load (full unpickling can run code).
"""

from __future__ import annotations

from mmf_fashion.cli import add_allow_unsafe_load


def run_fashionvil(args) -> int:
    from mmf_fashion.convert import fashionvil

    report = fashionvil.convert_file(
        args.source, args.out, allow_unsafe=args.allow_unsafe_load, visual_token_type=args.visual_token_type
    )
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}")
    return 0


def run_xvlm(args) -> int:
    from mmf_fashion.convert import xvlm

    report = xvlm.convert_file(args.source, args.out, allow_unsafe=args.allow_unsafe_load)
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers) -> None:
    group = subparsers.add_parser("convert", help="convert released checkpoints of other code bases to ours")
    commands = group.add_subparsers(dest="convert_command", required=True)
    command = commands.add_parser("fashionvil", help="an official FashionViL (MMF fork) checkpoint")
    command.add_argument("--from", dest="source", required=True, help="the official .pth / .ckpt file")
    command.add_argument("--out", required=True, help="state dict file to write, in our fashionvil names")
    command.add_argument(
        "--visual-token-type",
        type=int,
        default=1,
        help="model_config.fashionvil.visual_token_type of the model to load it into (default 1)",
    )
    add_allow_unsafe_load(command)
    command.set_defaults(func=run_fashionvil)
    command = commands.add_parser("xvlm", help="an official X-VLM checkpoint (Swin-B + BERT-base)")
    command.add_argument("--from", dest="source", required=True, help="the official .th / .pth file")
    command.add_argument("--out", required=True, help="state dict file to write, in our xvlm names")
    add_allow_unsafe_load(command)
    command.set_defaults(func=run_xvlm)
