"""Whole-slide runs: tissue tiles streamed through a nuclei segmenter into an on-disk, resumable store, and the
slide-level figures built from it (count, density per mm^2 of tissue, type composition, heat map, hot spot)."""
