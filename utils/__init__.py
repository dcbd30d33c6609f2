"""BN-NAS shared library: search spaces, FLOPs tables, indicator, data, training runtime."""
