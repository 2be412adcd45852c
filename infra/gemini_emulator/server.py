"""Running the app on a real socket: the CLI's serve loop and an in-process background server.

Both use ``handler_cancellation=True`` so that a client timing out (e.g. on a ``hang`` fault)
cancels its handler and frees its concurrency slot, and a short shutdown timeout so a hanging
request never delays Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from aiohttp.log import access_logger

from infra.gemini_emulator.app import create_app
from infra.gemini_emulator.state import STATE_KEY, EmulatorState

SHUTDOWN_TIMEOUT_S = 1.0


async def start_site(
    app: web.Application, host: str, port: int, *, access_log: bool = False
) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; return the runner (for cleanup) and the base URL (real port)."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,
        access_log=access_logger if access_log else None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    return runner, f"http://{_url_host(host)}:{bound[1]}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class BackgroundEmulator:
    """The emulator on its own event loop thread, for tests::

        with BackgroundEmulator({"image_scale": 0.25}) as emu:
            client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emu.base_url))
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
        data_dir: str | Path | None = None,
    ) -> None:
        kwargs = {"clock": clock} if clock else {}
        self.app = create_app(config, data_dir=data_dir, **kwargs)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gemini-emulator", daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    def start(self) -> str:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_site(self.app, self._host, self._port), self._loop)
        self._runner, self.base_url = future.result(timeout=10)
        return self.base_url

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundEmulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
