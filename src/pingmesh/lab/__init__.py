"""A virtual data-centre fabric on one Linux machine, to break on purpose (``pingmesh lab``).

- :mod:`~pingmesh.lab.plan`: the fabric as a pure plan (namespaces, links, addresses, routes);
- :mod:`~pingmesh.lab.faults`: the faults and the nftables rules that make them (pure);
- :mod:`~pingmesh.lab.commands`: running ``ip``/``nft`` (the one place that spawns them);
- :mod:`~pingmesh.lab.fabric`: the plan made real, and the sweep that removes it;
- :mod:`~pingmesh.lab.processes`, :mod:`~pingmesh.lab.state`: detached processes in
  namespaces, and the state file that lets ``pingmesh lab down`` find them again;
- :mod:`~pingmesh.lab.lab`: ``up``, ``down``, ``status``, ``fault`` and ``clear``;
- :mod:`~pingmesh.lab.starve`, :mod:`~pingmesh.lab.measure`: small programs run inside a
  namespace (SIGSTOP/SIGCONT cycling of an agent; a burst of real TCP probes);
- :mod:`~pingmesh.lab.detection`: fault → incident scenarios against ``/api/v1/incidents``,
  shared by the end-to-end tests and ``bench/lab_detection.py``.
"""
