"""CLI: ``python -m infra.gemini_emulator --host 127.0.0.1 --port 8500 [--config path.json] [--data-dir DIR]``.

Prints ``Gemini emulator listening on http://HOST:PORT`` once the socket is bound (``--port 0``
picks a free port; read that line to learn it) and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from infra.gemini_emulator.app import create_app
from infra.gemini_emulator.config import ConfigError
from infra.gemini_emulator.server import start_site

log = logging.getLogger("infra.gemini_emulator")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.gemini_emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500, help="0 picks a free port (printed on startup)")
    parser.add_argument("--config", type=Path, help="JSON config patch applied over the defaults")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where file bytes and batch results live (default: a temp dir); emptied of the "
        "emulator's files at exit either way",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--access-log", action="store_true", help="log every request (noisy in benchmarks)")
    return parser.parse_args(argv)


async def _serve(config: dict[str, Any], args: argparse.Namespace) -> None:
    app = create_app(config, data_dir=args.data_dir)
    runner, base_url = await start_site(app, args.host, args.port, access_log=args.access_log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Gemini emulator listening on {base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"cannot read --config {args.config}: {exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(_serve(config, args))
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
