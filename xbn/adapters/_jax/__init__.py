"""Plumbing shared by the JAX-based families (flax, haiku, equinox): ``common.py``.

Imports no framework here; ``common.py`` imports jax and optax.
"""
