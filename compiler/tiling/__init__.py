"""Tiling: layouts (sharding specs on a core mesh), tiles, per-layer costs, fit and the
candidate rectangles of each layer."""
