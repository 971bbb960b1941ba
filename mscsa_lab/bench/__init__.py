"""Measuring models for time: throughput (FPS) the way timm measures it, interleaved A/B comparisons, per-component latency."""
