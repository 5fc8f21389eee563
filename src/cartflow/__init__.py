"""cartflow: flow-cytometry monitoring of CAR-T cell therapy, from FCS exports to outcomes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cartflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
