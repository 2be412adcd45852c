"""CLI of the local stack.

    python -m infra.local up      # the whole stack in the foreground; Ctrl-C stops it
    python -m infra.local demo    # a stack on free ports, then the demo scenario (infra/local/demo.py)
    python -m infra.local check   # only the prerequisite check
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from infra.local.stack import (
    DEFAULT_PROJECT, REPO_ROOT, Ports, Stack, StackError, check_prerequisites, generate_api_key,
)

STATE_DIR = REPO_ROOT / ".local-stack"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("up", "run the stack in the foreground"), ("demo", "run the demo on a fresh stack")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--project", default=DEFAULT_PROJECT, help="a demo- project id")
        p.add_argument("--no-gemini", action="store_true", help="don't start the Gemini emulator")
        p.add_argument("--gemini-config", type=Path, help="JSON config patch for the Gemini emulator")
        p.add_argument("--worker-threads", type=int, help="THREADS of the worker's gunicorn")
        p.add_argument("--function-env", action="append", default=[], metavar="KEY=VALUE",
                       help="extra environment of the function processes (repeatable)")
        p.add_argument("--scheduler-interval", type=float, default=5.0 if name == "up" else None,
                       help="seconds between Cloud Scheduler ticks to the poller (0 = none; 60 in the cloud)")
        if name == "up":
            p.add_argument("--no-functions", action="store_true", help="only the emulators")
    sub.add_parser("check", help="check the prerequisites and exit")
    return parser.parse_args(argv)


def _stack(args: argparse.Namespace, *, ports: Ports, state_dir: Path, functions: bool) -> Stack:
    function_env = {}
    for item in args.function_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--function-env expects KEY=VALUE, got {item!r}")
        function_env[key] = value
    gemini_config = None
    if args.gemini_config:
        import json

        gemini_config = json.loads(args.gemini_config.read_text())
    return Stack(
        api_key=generate_api_key(),
        ports=ports, project=args.project, state_dir=state_dir, gemini=not args.no_gemini,
        gemini_config=gemini_config, functions=functions, function_env=function_env,
        worker_threads=args.worker_threads, scheduler_interval=args.scheduler_interval or None,
    )


def _print_summary(stack: Stack) -> None:
    print("\nLocal stack is up:")
    for name, url in stack.urls.items():
        print(f"  {name:<10} {url}    (log: {stack.log_path(name)})")
    if stack.api_key:
        print(f"\nThe API wants the header  X-API-Key: {stack.api_key}")
    print("\nTo talk to it from another shell:")
    for key, value in stack.env().items():
        print(f"  export {key}={shlex.quote(value)}")
    print("\nCtrl-C stops every process.", flush=True)


def up(args: argparse.Namespace) -> int:
    # Ctrl-C stops the stack even when we were started with SIGINT ignored (a background job);
    # a closed terminal (SIGHUP) too. SIGTERM is the Stack's own business.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    ports = Ports.from_env()
    from infra.local.demo import use_real_gemini

    if use_real_gemini():
        print("GEMINI_API_KEY is set and GOOGLE_GEMINI_BASE_URL is not: the functions call the real Gemini API.")
        args.no_gemini = True
    print(f"Starting the local stack (logs in {STATE_DIR / 'logs'})...", flush=True)
    with _stack(args, ports=ports, state_dir=STATE_DIR, functions=not args.no_functions) as stack:
        timings = ", ".join(f"{n} {s}s" for n, s in stack.startup_seconds.items())
        print(f"Ready ({timings}).")
        _print_summary(stack)
        try:
            while True:
                time.sleep(1)
                dead = [name for name, alive in stack.alive().items() if not alive]
                if dead:
                    for name in dead:
                        print(f"\n{name} exited unexpectedly\n{stack.processes[name].log_tail()}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            print("\nStopping...", flush=True)
    return 0


def demo(args: argparse.Namespace) -> int:
    from infra.local import demo as scenario

    if scenario.use_real_gemini():
        print("GEMINI_API_KEY is set and GOOGLE_GEMINI_BASE_URL is not: using the real Gemini API.")
        args.no_gemini = True
    else:
        args.function_env = [f"{k}={v}" for k, v in scenario.FUNCTION_ENV.items()] + args.function_env
    if args.scheduler_interval is None:
        args.scheduler_interval = scenario.SCHEDULER_INTERVAL
    stack = _stack(args, ports=Ports.free(), state_dir=STATE_DIR / "demo", functions=True)
    if stack.gemini:
        stack.gemini_config = {**scenario.GEMINI_CONFIG, **(stack.gemini_config or {})}
    with stack:
        return scenario.run_demo(stack)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        if args.command == "check":
            check_prerequisites()
            print("All prerequisites are installed.")
            return 0
        return {"up": up, "demo": demo}[args.command](args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
