"""collector stage of the Dreamer data path."""
