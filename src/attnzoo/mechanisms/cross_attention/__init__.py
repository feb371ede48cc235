"""Mechanisms of the ``cross_attention`` family (see :mod:`attnzoo.families`)."""
