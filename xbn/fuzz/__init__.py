"""``xbn fuzz``: Hypothesis searches for scenarios where a framework departs from its own
declared profile or hits a numerical hazard, shrinks each to a minimal scenario and writes
it to ``findings/``. Imported only by ``xbn fuzz`` and ``xbn repro`` (Hypothesis is heavy)."""
