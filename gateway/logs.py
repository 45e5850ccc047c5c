"""Logging: structlog JSON lines to stdout (pretty on a TTY), stdlib loggers routed through the same chain.

``site_id``/``device_id`` travel in contextvars (``structlog.contextvars.bind_contextvars``); secrets never
reach a log line: values of keys named like a secret are redacted by the last processor before rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_MARKERS = ("password", "secret", "private_key", "token", "passphrase")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(marker in key.lower() for marker in _SECRET_MARKERS):
            event[key] = "<redacted>"
    return event


def configure(level: str = "info", *, json: bool | None = None, stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger once, at process start (JSON unless ``stream`` is a TTY)."""
    stream = stream or sys.stdout
    render_json = not stream.isatty() if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _redact,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if render_json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("pymodbus").setLevel(max(numeric, logging.WARNING))
    # openleadr forces its logger to INFO and logs every report value: only its warnings.
    logging.getLogger("openleadr").setLevel(max(numeric, logging.WARNING))
    # pandapower says at INFO on import that plotly is missing: not the operator's concern.
    logging.getLogger("pandapower").setLevel(max(numeric, logging.WARNING))
