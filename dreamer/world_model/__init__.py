"""world_model stage of the Dreamer data path."""
