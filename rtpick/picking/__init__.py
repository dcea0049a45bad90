"""Pick extraction from stacked probabilities."""
