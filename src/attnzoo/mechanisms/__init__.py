"""Registered mechanisms, one file each, grouped by family; imported on first registry use."""
