"""The Flax family: ``adapter_linen.py``, ``adapter_nnx.py``, ``state_io.py`` (msgpack and npz
variables), ``live.py`` (live linen and NNX models for ``xbn audit``/``verify``).

Family folders import no framework here: flax is imported by the modules that use it.
"""
