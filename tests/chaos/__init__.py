"""The chaos suite: many runs under load while processes, queues and connections fail.

``python -m tests.chaos.run`` (``make chaos``) is the full run; a reduced one is
part of ``make test`` (``tests/chaos/test_chaos.py``).
"""
