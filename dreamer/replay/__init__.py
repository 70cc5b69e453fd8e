"""replay stage of the Dreamer data path."""
