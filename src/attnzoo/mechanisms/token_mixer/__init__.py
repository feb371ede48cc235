"""Mechanisms of the ``token_mixer`` family (see :mod:`attnzoo.families`)."""
