"""`ReplyDropper`: a TCP proxy between clients and a broker that loses one chosen reply.

What a broker restart or a cut link does to a command in flight, on demand: the command
reaches the broker and runs; its reply never comes back, and the connection closes. The
client sees a connection error after its command ran (redis-py then reconnects, and may send
it again). Which reply: the first one to a command that names `marker` (a script's SHA) for
which `lose(reply)` holds (its first bytes, at least 8); every other byte passes as it is.
`hold=True`: the connection stays open instead, and nothing more comes back on it (a reply
that never comes: the client waits on until it gives up, or is interrupted).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class ReplyDropper:
    def __init__(self, port: int, marker: bytes, lose: Callable[[bytes], bool], times: int = 1, hold: bool = False):
        self.target = ("127.0.0.1", port)
        self.hold = hold
        self.marker = marker
        self.lose = lose
        self.left = times
        self.dropped: list[bytes] = []  # the first bytes of each reply lost
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._socks += [client, upstream]
            armed = threading.Event()  # the last command sent names the marker
            threading.Thread(target=self._up, args=(client, upstream, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, armed), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        """Client to broker: everything; note a command that names the marker."""
        try:
            while data := client.recv(65536):
                if self.left > 0 and self.marker in data:
                    armed.set()
                upstream.sendall(data)
        except OSError:
            pass
        _close(client)
        _close(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        """Broker to client: everything, except the chosen reply (then both ends close)."""
        held = False
        try:
            while data := upstream.recv(65536):
                if held:
                    continue
                if armed.is_set():
                    while len(data) < 8 and (more := upstream.recv(65536)):
                        data += more
                    armed.clear()
                    with self._lock:
                        lose = self.left > 0 and self.lose(data)
                        if lose:
                            self.left -= 1
                            self.dropped.append(data[:64])
                    if lose and self.hold:
                        held = True
                        continue
                    if lose:
                        break
                client.sendall(data)
        except OSError:
            pass
        _close(client)
        _close(upstream)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
