"""Prometheus exporter for asynchronous generation tasks on the LemonData API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lemondata-exporter")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
