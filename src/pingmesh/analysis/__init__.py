"""The analysis shell: windowed jobs over the raw store, detection, rollups and retention.

==================  ==========================================================================
module              what it does
==================  ==========================================================================
:mod:`.queries`     every SQL statement (histograms, SLAs, matrices, rollup merges)
:mod:`.engine`      a DuckDB session that runs them and turns results into rows and facts
:mod:`.jobs`        the 10-minute job (from raw) and the 1-hour / 1-day rollups (from Parquet)
:mod:`.fastpath`    raw read once in slices: the 30 s window and the detectors' facts
:mod:`.detect`      the detectors (:mod:`pingmesh.core.analysis`) → incidents, traceroutes
:mod:`.fileindex`   which raw files can hold a time range (footers read once)
:mod:`.expected`    the pairs the pinglists promise (coverage)
:mod:`.retention`   what is kept how long; expired hours and days removed whole
:mod:`.runner`      runs each job when its window is due
:mod:`.synthetic`   synthetic probes into a raw store (tests, benchmarks)
==================  ==========================================================================
"""
