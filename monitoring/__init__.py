"""Frame stats, drift, SQLite metrics, sampling, upload."""
