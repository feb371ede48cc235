"""Mechanisms of the ``gate`` family (see :mod:`attnzoo.families`)."""
