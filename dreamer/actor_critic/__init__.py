"""actor_critic stage of the Dreamer data path."""
