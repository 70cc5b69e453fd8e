"""training stage of the Dreamer data path."""
