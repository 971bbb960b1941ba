"""Explaining what MSCSA attends to: per-scale saliency of the key/value projections, their evaluation and rendering."""
