"""How the agent reaches the server: QUIC (TLS 1.3) for uploads, HTTP as the fallback.

- :mod:`.quic`: one long-lived, authenticated QUIC connection (aioquic, imported only by
  agents that have QUIC configured);
- :mod:`.http`: the agent's HTTP client with the uploads put on that connection, falling back
  to HTTP, with backoff before QUIC is tried again;
- :mod:`.spool`: bandwidth reports, kept until the server acknowledges them (bounded);
- :mod:`.uplink`: all of the above, and the bandwidth sampler, as the agent wires them.
"""
