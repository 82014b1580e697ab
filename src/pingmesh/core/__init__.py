"""The pure core of pingmesh: no sockets, no clock, no asyncio; time arrives as an argument."""
