"""Measuring models without running them for time: FLOPs, parameters, components, Table 6 comparisons, FLOPs budgets, architecture tables."""
