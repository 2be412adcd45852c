"""The real clock. Tests inject a fake one so limiter and retry logic never sleep."""
import threading
import time
from collections.abc import Callable


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, wake: threading.Condition, woken: Callable[[], bool], seconds: float) -> None:
        with wake:
            wake.wait_for(woken, timeout=max(0.0, seconds))
