"""imagination stage of the Dreamer data path."""
