"""Shared by the config-file tests: the file name they parse under, and the problems a bad file is refused with."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

SRC = "gw.toml"


def refused(text: str) -> list[str]:
    """The problems (one a line, without the file name) ``parse_config`` refuses ``text`` with; fails if it loads."""
    with pytest.raises(ConfigError) as exc:
        parse_config(text, SRC)
    return [line.removeprefix(f"{SRC}: ") for line in str(exc.value).splitlines()]
