"""Benchmarks: scripts that start servers and measure them with the load generator."""
