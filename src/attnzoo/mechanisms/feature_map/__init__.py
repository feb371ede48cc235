"""Mechanisms of the ``feature_map`` family (see :mod:`attnzoo.families`)."""
