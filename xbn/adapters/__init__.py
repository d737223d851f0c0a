"""Adapters, one folder per framework family, and the driver loop they share (``base.py``).

Layout (the same file names in every family, as in Keras' ``keras/src/backend/<name>/``)::

    adapters/<family>/adapter.py        the adapter (adapter_<variant>.py when several)
    adapters/<family>/state_io.py       weights files of the family (torch, keras, flax)
    adapters/<family>/live.py           live models for xbn audit/verify (torch, keras, flax)
    adapters/_jax/common.py             plumbing shared by the JAX families

Which module serves which framework id is declared once, in ``xbn.frameworks.registry``. Nothing here
imports a framework.
"""
