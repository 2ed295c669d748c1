"""Trainer: configs, the ReBO/PPO loop and its pure maths (``core_algos``)."""
