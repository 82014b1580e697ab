"""How the agent reaches the server: QUIC (TLS 1.3) for uploads, HTTP as the fallback.

- :mod:`.quic`: one long-lived, authenticated QUIC connection (aioquic);
- :mod:`.http`: an httpx transport that puts uploads on that connection and falls back to
  HTTP, with backoff before QUIC is tried again;
- :mod:`.spool`: bandwidth reports, kept until the server acknowledges them (bounded).
"""
