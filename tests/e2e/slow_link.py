"""A slow network link for one process of the stack: a TCP proxy in front of an emulator that
forwards one direction (requests or answers) at a fixed rate and the other at full speed.

gRPC (Firestore) and HTTP both run over it unchanged, since it only delays bytes. Scenarios
that must land a fault in the middle of a burst (a SIGKILL among a job's writes, a tick's
deadline inside a results download) use it to make the burst last seconds instead of a
fraction of one, so the fault lands where it should on a fast machine and on a loaded one."""
from __future__ import annotations

import socket
import threading
import time


class SlowLink:
    """Listen on 127.0.0.1:<port>; forward every connection to `upstream`, passing at most
    `bytes_per_second` in one direction (towards `upstream` unless `slow_answers`), one
    budget for all connections."""

    def __init__(self, upstream: tuple[str, int], bytes_per_second: int, *, slow_answers: bool = False) -> None:
        self.upstream = upstream
        self.bytes_per_second = bytes_per_second
        self.slow_answers = slow_answers
        self.forwarded = 0
        self._lock = threading.Lock()
        self._next_send = time.monotonic()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name="slow-link", daemon=True).start()

    def __enter__(self) -> SlowLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for s in [self._server, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return  # closed
            self._sockets += [client, server]
            for source, sink, slow in ((client, server, not self.slow_answers), (server, client, self.slow_answers)):
                threading.Thread(target=self._pump, args=(source, sink, slow), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        try:
            while data := source.recv(16_384):
                if throttled:
                    self._wait_for_budget(len(data))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _wait_for_budget(self, size: int) -> None:
        """Book `size` bytes on the shared schedule, then sleep until their turn."""
        with self._lock:
            start = max(self._next_send, time.monotonic())
            self._next_send = start + size / self.bytes_per_second
            self.forwarded += size
        time.sleep(max(0.0, start - time.monotonic()))
