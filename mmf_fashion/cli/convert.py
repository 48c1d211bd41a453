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

import sys

from mmf_fashion.cli import add_allow_unsafe_load


def _convert(args, convert_file, **options) -> int:
    """Convert, print the report; a refused or unreadable file is one error line, exit code 1."""
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError

    try:
        report = convert_file(args.source, args.out, allow_unsafe=args.allow_unsafe_load, **options)
    except (FileNotFoundError, ValueError, UnsafeCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}")
    return 0


def run_fashionvil(args) -> int:
    from mmf_fashion.convert import fashionvil

    return _convert(args, fashionvil.convert_file, visual_token_type=args.visual_token_type)


def run_xvlm(args) -> int:
    from mmf_fashion.convert import xvlm

    return _convert(args, xvlm.convert_file)


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
