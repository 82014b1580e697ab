"""The agent ↔ server protocol over QUIC (ALPN ``pingmesh/1``), TLS 1.3 as QUIC requires.

One request per bidirectional stream, as in seed 001, but every request is answered (the
original never acknowledged, so a report lost in a restart was lost without anyone knowing):

- the client writes ``PATH\\n`` then the body (JSON), and ends the stream (FIN);
- the server writes ``STATUS\\n`` (an HTTP status code) then the body (JSON), and ends it.

Paths and statuses are those of the HTTP API, so the HTTP fallback sends the same bodies to
the same paths and gets the same answers. The first request on a connection must be
``/hello`` (:class:`HelloModel`: agent id, alias, token); until it succeeds every other request
is answered 401. Many streams run at once on one connection, so a slow request does not hold
up the others.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ALPN = "pingmesh/1"
HELLO_PATH = "/hello"
MAX_PATH_BYTES = 256
MAX_TOKEN_CHARS = 256


class FrameError(ValueError):
    """A request or response that does not follow the framing."""


class HelloModel(BaseModel):
    """Who the agent is (``agent``: its topology name; ``alias``: a label) and its proof."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str = Field(min_length=1, max_length=128)
    alias: str = Field(default="", max_length=128)
    token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS)


def encode_request(path: str, body: bytes) -> bytes:
    """The bytes of one request stream."""
    return path.encode("ascii") + b"\n" + body


def decode_request(data: bytes) -> tuple[str, bytes]:
    """(path, body) of one request stream; raises FrameError."""
    head, sep, body = data.partition(b"\n")
    if not sep or not head.startswith(b"/") or len(head) > MAX_PATH_BYTES:
        raise FrameError("a request starts with its path and a newline")
    try:
        return head.decode("ascii"), body
    except UnicodeDecodeError as exc:
        raise FrameError("the path is not ASCII") from exc


def encode_response(status: int, body: bytes) -> bytes:
    """The bytes of one response stream."""
    return b"%d\n" % status + body


def decode_response(data: bytes) -> tuple[int, bytes]:
    """(status, body) of one response stream; raises FrameError."""
    head, sep, body = data.partition(b"\n")
    if not sep or not head.isdigit() or len(head) != 3:
        raise FrameError("a response starts with a 3-digit status and a newline")
    return int(head), body
