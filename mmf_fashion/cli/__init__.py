"""The `mmf-fashion` command line (see main.py)."""


def add_allow_unsafe_load(parser) -> None:
    """The one opt-in flag of every command that reads a torch file (see
    trainers/checkpointing.safe_torch_load): the same name and words everywhere."""
    parser.add_argument(
        "--allow-unsafe-load",
        action="store_true",
        help="load torch files that need full unpickling, which can run code: only files you trust "
        "(same as checkpoint.allow_unsafe_load=true)",
    )
