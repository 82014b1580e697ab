"""The analysis algorithms, pure: window facts in, detections out; time is an argument.

The analysis shell (:mod:`pingmesh.analysis`) aggregates a window of the raw store with DuckDB
into the facts of :mod:`.model` and hands them to the detectors here; the incident store turns
their detections into incidents. Nothing in this package reads a file, a socket or a clock.

==================  ========================================================================
module              what it decides
==================  ========================================================================
:mod:`.model`       the facts a detector sees (counts per pair, server, cell, entity)
:mod:`.significance`  is a drop rate really above a baseline? (binomial tail, G-test)
:mod:`.host`        host or network: host_down, host_unreachable, host_noise (§6.1.12)
:mod:`.blackhole`   black holes, type 1 and 2, the ToR score and tier escalation (PM §5.1)
:mod:`.silent_drop`  silent random drops above baseline and the tier that explains them
:mod:`.sla_alerts`  high_latency / packet_loss over per-scope thresholds (PM §4.3)
:mod:`.voting`      the device on the failing flows' traceroute paths (007, R-Pingmesh)
:mod:`.tracing`     which failing 5-tuples get traced, rate-limited centrally
:mod:`.lifecycle`   hysteresis: open at once, close after a few clear windows
:mod:`.synthetic`   a fleet, its fabric and probe records with injected faults
==================  ========================================================================
"""
