"""The controller: turns the topology into per-server pinglists; stateless."""
