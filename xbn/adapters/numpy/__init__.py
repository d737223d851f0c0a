"""The numpy family: xbn's float64 reference run as an adapter (``adapter.py``).

Family folders import no framework here: ``xbn --help`` and ``xbn frameworks`` load this
package without loading its framework.
"""
