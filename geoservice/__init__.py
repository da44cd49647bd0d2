"""geoservice: real-time geofenced offers for retail."""

__version__ = "0.1.0"
