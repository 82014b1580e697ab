"""The agent: probes its peers, answers their probes, uploads results; runs on every server.

One module per concern:

- :mod:`~pingmesh.agent.agent`: the :class:`~pingmesh.agent.agent.Agent` that runs the rest;
- :mod:`~pingmesh.agent.probe_loop`: schedule + global rate cap + concurrency cap + loop lag;
- :mod:`~pingmesh.agent.probers`: one module per probe kind (``tcp``: TCP connect,
  ``tcp_echo``: payload echo, ``http``: HTTP(S) ping, ``udp``: UDP echo, ``icmp``: ICMP echo,
  ``traceroute``: 5-tuple-preserving TCP traceroute), and ``kernel``: what the kernel tells
  them (``TCP_INFO``, receive timestamps, ICMP errors);
- :mod:`~pingmesh.agent.echo_wire`: the bytes of the echo probes;
- :mod:`~pingmesh.agent.responder` (TCP) and :mod:`~pingmesh.agent.udp_responder`: what other
  agents' probes reach, bounded against floods;
- :mod:`~pingmesh.agent.pinglist_policy` (pure) and :mod:`~pingmesh.agent.fetcher`: the
  fail-closed pinglist;
- :mod:`~pingmesh.agent.aggregates`: per-peer and per-scope windows and totals;
- :mod:`~pingmesh.agent.uploader` and :mod:`~pingmesh.agent.spool`: result batches to the
  collector, bounded, retried, spooled on disk;
- :mod:`~pingmesh.agent.tasks`: traceroute tasks from the server;
- :mod:`~pingmesh.agent.http_client`: the small HTTP client for all of the above;
- :mod:`~pingmesh.agent.results_file`: standalone JSON-lines output;
- :mod:`~pingmesh.agent.metrics`: ``/metrics`` and ``/ping``.
"""
