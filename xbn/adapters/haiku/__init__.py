"""The Haiku family: ``adapter.py`` (no port code: xbn does not read Haiku files or models).

Family folders import no framework here: haiku is imported by the modules that use it.
"""
