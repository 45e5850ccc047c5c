"""Suite-wide fixtures: each test starts with structlog and the root logger as the library leaves them.

``gridedge`` commands run in-process (``cli.main``) configure logging for the whole process: caching loggers on
first use, filtering by level, writing to a stream pytest closes after the test. Left in place, that would decide
what a later test's ``capture_logs`` sees (a logger cached under it never reaches the capture).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
