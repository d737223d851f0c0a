"""The PyTorch family: ``adapter.py`` (the conformance adapter), ``state_io.py`` (state_dict
and safetensors files), ``live.py`` (live torch modules for ``xbn audit``/``verify``).

Family folders import no framework here: torch is imported by the modules that use it.
"""
