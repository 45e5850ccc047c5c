"""``async with`` for the uplink transports: start on entry, stop on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartStop:
    """A transport with ``start()`` and ``stop()``, usable as ``async with transport: ...``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
