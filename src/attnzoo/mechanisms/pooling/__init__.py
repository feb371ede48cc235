"""Mechanisms of the ``pooling`` family (see :mod:`attnzoo.families`)."""
