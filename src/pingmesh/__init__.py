"""pingmesh: is it the network, and where?"""

__version__ = "0.1.0"
