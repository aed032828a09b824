"""features.segments.segmenter."""
