"""Rewards as plug-ins: the registry the trainer looks reward functions up in, and batch scoring (registry.py)."""
