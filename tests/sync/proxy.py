"""A TCP proxy on loopback that can stop answering: the network fault a stopped
server does not show (connections that are accepted and then hang)."""

from __future__ import annotations

import socket
import threading


class HangingProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        """From now on nothing passes, in either direction; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """Drop the connections that hung (their peers see a reset) and pass again."""
        with self._lock:
            stuck, self._sockets = self._sockets, []
        for s in stuck:
            _close(s)
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        _close(self.listener)
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        self._flowing.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._sockets.append(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            while not self._flowing.is_set() and not self._closed.is_set():
                self._flowing.wait(0.1)  # hung: hold the bytes, answer nothing
            if self._closed.is_set():
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
