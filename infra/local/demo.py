"""``make demo``: a placeholder until the demo scenario lands; it only shows the running stack."""
from __future__ import annotations

from infra.local.stack import Stack


def run_demo(stack: Stack) -> int:
    print("The demo scenario is not written yet; the stack is up at:")
    for name, url in stack.urls.items():
        print(f"  {name:<10} {url}")
    return 0
