"""``pingmesh server``: controller, collector, analysis and web in one process."""
