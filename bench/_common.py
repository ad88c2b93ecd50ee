"""What the load benchmarks share: a free port, waiting for a server, one raw HTTP exchange.

Raw sockets rather than an HTTP client: the benchmarks measure the server, and a client library's own
time would hide part of it.
"""
import socket
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port, deadline=30):
    """Return once something listens on `port`; RuntimeError after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def request_bytes(path, body, port):
    """A whole POST of an XML push, ready to send (Connection: close)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def exchange(port, raw, timeout=None):
    """Send `raw`, read the answer to the end: (seconds, the answer's bytes)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return time.perf_counter() - started, data
