"""``xbn fuzz``: Hypothesis searches for scenarios where a framework departs from its own
declared profile or hits a numerical hazard that nothing xbn knows accounts for, shrinks each to
a minimal scenario, keeps one per framework and root cause, and writes it to a folder that held
no files. Imported only by ``xbn fuzz`` and ``xbn repro`` (Hypothesis is heavy)."""
