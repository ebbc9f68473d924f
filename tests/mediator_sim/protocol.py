"""The admin socket's framing, and a small client for tests.

A request is four little-endian u32 (magic, command, param1, param2); an answer is three (magic,
status, data_len) followed by data_len bytes of UTF-8 text.
"""

import socket
import struct
import time

MAGIC = 0x56475055
REQUEST = struct.Struct("<IIII")
HEADER = struct.Struct("<III")

SHOW_METRICS = 0x10
SHOW_HEALTH = 0x11
RELOAD_CONFIG = 0x12
# Defined by the mediator but not handled: it answers them as unknown commands.
QUARANTINE_VM = 0x13
UNQUARANTINE_VM = 0x14
SHOW_CONNECTIONS = 0x15

STATUS_OK = 0
STATUS_ERROR = 1

# The names `python3 -m mediator_sim ask` accepts, with (command, param1).
COMMANDS = {
    "metrics": (SHOW_METRICS, 0),
    "prometheus": (SHOW_METRICS, 1),
    "health": (SHOW_HEALTH, 0),
    "reload": (RELOAD_CONFIG, 0),
    "connections": (SHOW_CONNECTIONS, 0),
}


class Dropped(Exception):
    """The mediator closed the connection without answering."""


class BadAnswer(Exception):
    """The answer does not follow the protocol."""


def encode_request(command, param1=0, param2=0, magic=MAGIC):
    return REQUEST.pack(magic, command, param1, param2)


def encode_answer(status, text):
    data = text.encode("utf-8")
    return HEADER.pack(MAGIC, status, len(data)) + data


def decode_answer(data):
    """(status, text) of a whole answer; BadAnswer when it is not one."""
    if len(data) < HEADER.size:
        raise BadAnswer("answer of %d bytes, shorter than the header" % len(data))
    magic, status, data_len = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadAnswer("magic 0x%08x" % magic)
    body = data[HEADER.size:]
    if len(body) != data_len:
        raise BadAnswer("%d bytes of text, %d announced" % (len(body), data_len))
    return status, body.decode("utf-8")


def exchange(socket_path, data, timeout=5.0):
    """Sends `data`, ends the sending side, and returns every byte the peer sends until it closes."""
    deadline = time.monotonic() + timeout
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(socket_path)
        if data:
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        conn.close()


def ask(socket_path, command, param1=0, param2=0, timeout=5.0):
    """(status, text) of one request; Dropped when the mediator closes without answering."""
    data = exchange(socket_path, encode_request(command, param1, param2), timeout)
    if not data:
        raise Dropped("no answer to command 0x%02x" % command)
    return decode_answer(data)
