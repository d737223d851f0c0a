"""The Equinox family: ``adapter.py`` (no port code: xbn does not read Equinox files or models).

Family folders import no framework here: equinox is imported by the modules that use it.
"""
