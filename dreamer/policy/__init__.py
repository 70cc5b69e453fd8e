"""policy stage of the Dreamer data path."""
