"""Explaining what MSCSA attends to: per-scale saliency of the key/value projections.

``capture`` (the one forward/backward every method shares), ``methods`` (the methods as classes,
``attribute_all``), ``saliency`` (``compute_saliency``, the one-call form), ``targets`` (class
index, name or callable; class names), ``geometry`` (where grid cells lie; letterbox padding;
clicks), ``evaluation`` (scores on the token grid with baselines), ``faithfulness`` (deletion and
insertion), ``batch`` (``explain_images``), ``render`` (figures).
"""
