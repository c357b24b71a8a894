"""The wire protocol, pure: frames, decoding/encoding and the two state machines.

Nothing here does I/O (no sockets, no clock): the client and the server are thin asyncio shells
around :class:`~chucky.protocol.client.ClientProtocol` and
:class:`~chucky.protocol.server.ServerProtocol`.
"""

from .client import ClientProtocol, ClientState
from .frames import FrameError, decode_client_frame, encode
from .server import ServerProtocol, ServerState
from .server_frames import decode_server_frame

__all__ = [
    "ClientProtocol",
    "ClientState",
    "FrameError",
    "ServerProtocol",
    "ServerState",
    "decode_client_frame",
    "decode_server_frame",
    "encode",
]
