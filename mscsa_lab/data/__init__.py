"""Datasets: the synthetic multi-scale shapes (offline, made on the fly)."""
