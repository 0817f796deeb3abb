"""A load generator for any realtime deployment: ``python -m loadtest SCENARIO --url ...``."""
