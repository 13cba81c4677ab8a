"""Just enough SPDY/3.1 to serve ``exec`` and ``port-forward``: the API server speaks it
to a kubelet for streams (kubectl's WebSocket ends at the API server, which translates).

A session is one upgraded connection. The API server opens streams (SYN_STREAM with a
``streamtype`` header: error, stdin, stdout, stderr, resize for exec; error and data,
with ``port`` and ``requestid``, for port-forward); the agent answers each with a
SYN_REPLY, writes DATA frames, and ends a stream with the FIN flag. Header blocks are
zlib-compressed with the protocol's fixed dictionary, one compression context per
direction for the whole connection.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

LOG = logging.getLogger("rhizeption_agent.spdy")

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01

# The header compression dictionary of SPDY/3 (draft-mbelshe-httpbis-spdy-00, 2.6.10.1).
HEADER_DICTIONARY = bytes.fromhex(
    "000000076f7074696f6e73000000046865616400000004706f7374000000037075740000000664656c65746500000005"
    "7472616365000000066163636570740000000e6163636570742d636861727365740000000f6163636570742d656e636f"
    "64696e670000000f6163636570742d6c616e67756167650000000d6163636570742d72616e6765730000000361676500"
    "000005616c6c6f770000000d617574686f72697a6174696f6e0000000d63616368652d636f6e74726f6c0000000a636f"
    "6e6e656374696f6e0000000c636f6e74656e742d6261736500000010636f6e74656e742d656e636f64696e6700000010"
    "636f6e74656e742d6c616e67756167650000000e636f6e74656e742d6c656e67746800000010636f6e74656e742d6c6f"
    "636174696f6e0000000b636f6e74656e742d6d64350000000d636f6e74656e742d72616e67650000000c636f6e74656e"
    "742d74797065000000046461746500000004657461670000000665787065637400000007657870697265730000000466"
    "726f6d00000004686f73740000000869662d6d617463680000001169662d6d6f6469666965642d73696e63650000000d"
    "69662d6e6f6e652d6d617463680000000869662d72616e67650000001369662d756e6d6f6469666965642d73696e6365"
    "0000000d6c6173742d6d6f646966696564000000086c6f636174696f6e0000000c6d61782d666f727761726473000000"
    "06707261676d610000001270726f78792d61757468656e7469636174650000001370726f78792d617574686f72697a61"
    "74696f6e0000000572616e676500000007726566657265720000000b72657472792d6166746572000000067365727665"
    "7200000002746500000007747261696c6572000000117472616e736665722d656e636f64696e67000000077570677261"
    "64650000000a757365722d6167656e74000000047661727900000003766961000000077761726e696e67000000107777"
    "772d61757468656e746963617465000000066d6574686f64000000036765740000000673746174757300000006323030"
    "204f4b0000000776657273696f6e00000008485454502f312e310000000375726c000000067075626c69630000000a73"
    "65742d636f6f6b69650000000a6b6565702d616c697665000000066f726967696e313030313031323031323032323035"
    "323036333030333032333033333034333035333036333037343032343035343036343037343038343039343130343131"
    "343132343133343134343135343136343137353032353034353035323033204e6f6e2d417574686f7269746174697665"
    "20496e666f726d6174696f6e323034204e6f20436f6e74656e74333031204d6f766564205065726d616e656e746c7934"
    "303020426164205265717565737434303120556e617574686f72697a656434303320466f7262696464656e343034204e"
    "6f7420466f756e6435303020496e7465726e616c20536572766572204572726f72353031204e6f7420496d706c656d65"
    "6e746564353033205365727669636520556e617661696c61626c654a616e20466562204d617220417072204d6179204a"
    "756e204a756c204175672053657074204f6374204e6f76204465632030303a30303a3030204d6f6e2c205475652c2057"
    "65642c205468752c204672692c205361742c2053756e2c20474d546368756e6b65642c746578742f68746d6c2c696d61"
    "67652f706e672c696d6167652f6a70672c696d6167652f6769662c6170706c69636174696f6e2f786d6c2c6170706c69"
    "636174696f6e2f7868746d6c2b786d6c2c746578742f706c61696e2c746578742f6a6176617363726970742c7075626c"
    "6963707269766174656d61782d6167653d677a69702c6465666c6174652c73646368636861727365743d7574662d3863"
    "6861727365743d69736f2d383835392d312c7574662d2c2a2c656e713d302e"
)


@dataclass
class Stream:
    id: int
    headers: dict[str, str]
    data: queue.Queue[bytes | None] = field(default_factory=queue.Queue)  # None: the peer's FIN
    closed: bool = False


class Session:
    """One SPDY connection on SOCK, served by the calling thread's ``run``."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, on_stream: Callable[[Stream], None]) -> None:
        self.sock = sock
        self.on_stream = on_stream
        self.streams: dict[int, Stream] = {}
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)
        self._write = threading.Lock()
        self.done = threading.Event()

    # -- writing -----------------------------------------------------------------------
    def _send(self, frame: bytes) -> None:
        with self._write:
            self.sock.sendall(frame)

    def _control(self, kind: int, flags: int, body: bytes) -> None:
        self._send(struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body)

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            n, v = name.lower().encode(), value.encode()
            raw += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
        with self._write:  # one compression context: blocks must go out in compression order
            return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def reply(self, stream: Stream) -> None:
        self._control(SYN_REPLY, 0, struct.pack(">I", stream.id) + self._header_block({}))

    def write(self, stream: Stream, data: bytes, fin: bool = False) -> None:
        if stream.closed:
            return
        for i in range(0, len(data), 16384) or [0]:
            chunk = data[i : i + 16384]
            last = fin and i + 16384 >= len(data)
            self._send(
                struct.pack(">II", stream.id & 0x7FFFFFFF, ((FLAG_FIN if last else 0) << 24) | len(chunk))
                + chunk
            )
        if fin:
            if not data:
                self._send(struct.pack(">II", stream.id & 0x7FFFFFFF, FLAG_FIN << 24))
            stream.closed = True

    def close(self, stream: Stream) -> None:
        self.write(stream, b"", fin=True)

    def goaway(self) -> None:
        with contextlib.suppress(OSError):
            self._control(GOAWAY, 0, struct.pack(">II", max(self.streams, default=0), 0))

    # -- reading -----------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block)
        count = struct.unpack(">I", raw[:4])[0]
        pos, headers = 4, {}
        for _unused in range(count):
            (n,) = struct.unpack(">I", raw[pos : pos + 4])
            name = raw[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (v,) = struct.unpack(">I", raw[pos : pos + 4])
            headers[name] = raw[pos + 4 : pos + 4 + v].decode()
            pos += 4 + v
        return headers

    def run(self) -> None:
        """Read frames until the peer goes away."""
        try:
            while not self.done.is_set():
                head = self._read(8)
                first, second = struct.unpack(">II", head)
                flags, length = second >> 24, second & 0xFFFFFF
                body = self._read(length) if length else b""
                if first & 0x80000000:
                    self._on_control(first & 0xFFFF, flags, body)
                else:
                    stream = self.streams.get(first & 0x7FFFFFFF)
                    if stream is not None:
                        if body:
                            stream.data.put(body)
                        if flags & FLAG_FIN:
                            stream.data.put(None)
        except (EOFError, OSError, ssl.SSLError):
            pass
        finally:
            self.done.set()
            for stream in self.streams.values():
                stream.data.put(None)

    def _on_control(self, kind: int, flags: int, body: bytes) -> None:
        if kind == SYN_STREAM:
            (sid,) = struct.unpack(">I", body[:4])
            stream = Stream(sid & 0x7FFFFFFF, self._headers(body[10:]))
            self.streams[stream.id] = stream
            self.reply(stream)
            if flags & FLAG_FIN:
                stream.data.put(None)
            self.on_stream(stream)
        elif kind == RST_STREAM:
            (sid,) = struct.unpack(">I", body[:4])
            stream = self.streams.get(sid & 0x7FFFFFFF)
            if stream is not None:
                stream.closed = True
                stream.data.put(None)
        elif kind == PING:
            self._control(PING, 0, body)
        elif kind == GOAWAY:
            self.done.set()
        elif kind == HEADERS:
            (sid,) = struct.unpack(">I", body[:4])
            self._headers(body[4:])  # keep the decompression context in step
