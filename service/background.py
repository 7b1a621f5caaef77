"""`BackgroundLoop`: the one way a process runs a job in the background of its event loop.

A job is an async `step` run over and over until `stop()`: every `interval_s` seconds (polls
and health checks), or back to back when the step itself waits for work (a queue consumer,
`interval_s=0`). A step that raises is logged, handed to `on_error`, and the loop goes on:
a background job must not die of one bad round while the process keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class BackgroundLoop:
    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval_s: float = 0.0,
        *,
        wait_first: bool = False,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.wait_first = wait_first  # poll something the process has just loaded: wait first
        self.on_error = on_error
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        if self.wait_first:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.step()
            except Exception as e:  # noqa: BLE001 - see the module docstring
                log.warning("%s: %s: %s", self.name, type(e).__name__, e)
                if self.on_error is not None:
                    self.on_error(e)
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
