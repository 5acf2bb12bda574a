"""Masks described in words: `expression` (the mask language, cheap to import) and `clipseg` (text segmentation)."""
