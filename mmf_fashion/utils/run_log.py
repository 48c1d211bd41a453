"""The run's log writer, the same on both supported MMFs.

MMF 1.0.0rc10 registers a `mmf.utils.logger.Logger` as the registry's "writer"
(method `write(message, level)`); MMF main registers a plain logging.Logger
and has no Logger class. Our code writes through `run_writer()`, which gives
the `write(message, level)` method on both.
"""

from __future__ import annotations

import logging
from typing import Any, Optional


class LoggingWriter:
    """`write(message, level)` over a logging.Logger (MMF main's writer)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, message, level: str = "info", donot_print: bool = False, *args, **kwargs) -> None:
        log = getattr(self.logger, str(level).lower(), None)
        if donot_print or not callable(log):
            log = self.logger.debug if donot_print else self.logger.info
        log(message)


def as_writer(writer: Any) -> Optional[Any]:
    """A registered writer with `write(message, level)`: itself, or wrapped."""
    if writer is None or callable(getattr(writer, "write", None)):
        return writer
    return LoggingWriter(writer)


def run_writer(config=None):
    """The registry's writer, registering one when there is none: rc10's Logger
    (log file under save_dir), or on MMF main the logger its setup_logger made."""
    from mmf.common.registry import registry

    writer = registry.get("writer", no_warning=True)
    if writer is None:
        try:
            from mmf.utils.logger import Logger  # rc10 only
        except ImportError:
            from mmf.utils.logger import setup_logger  # MMF main

            writer = setup_logger()
        else:
            writer = Logger(config if config is not None else registry.get("config", no_warning=True))
        registry.register("writer", writer)
    return as_writer(writer)
