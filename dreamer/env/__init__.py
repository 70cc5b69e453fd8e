"""Environments: embedded MuJoCo replicas and the Isaac Lab backend."""
