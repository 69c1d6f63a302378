"""The installed genaug version (recorded in every output row and config)."""
__version__ = "0.1.0"
