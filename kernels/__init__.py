"""Triton kernels of simprune, installed as ``simprune.kernels``.

Modules here import Triton at their top; ``simprune`` imports them only when a Triton backend runs.
"""
