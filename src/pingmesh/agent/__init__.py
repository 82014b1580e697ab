"""The agent: probes its peers, answers their probes, uploads results; runs on every server.

One module per concern:

- :mod:`~pingmesh.agent.agent`: the :class:`~pingmesh.agent.agent.Agent` that runs the rest;
- :mod:`~pingmesh.agent.probe_loop`: schedule + global rate cap + concurrency cap;
- :mod:`~pingmesh.agent.probers`: one module per probe kind (``tcp``: TCP connect);
- :mod:`~pingmesh.agent.responder`: the TCP echo responder other agents probe;
- :mod:`~pingmesh.agent.pinglist_policy` (pure) and :mod:`~pingmesh.agent.fetcher`: the
  fail-closed pinglist;
- :mod:`~pingmesh.agent.uploader`: result batches to the collector, bounded and retried;
- :mod:`~pingmesh.agent.results_file`: standalone JSON-lines output;
- :mod:`~pingmesh.agent.metrics`: ``/metrics`` and ``/ping``.
"""
