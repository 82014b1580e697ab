"""``pingmesh demo``: a whole fleet on loopback with the dashboard."""
