"""The real clock. Tests inject a fake one so limiter and retry logic never sleep."""
import time


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
