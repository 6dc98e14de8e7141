"""agentstream's consumer side: the consumer runtime and the services built on it.

``producer`` and ``consumers`` never import each other; both stand on ``schemas``. The
``agentstream`` command (:mod:`agentstream.consumers.cli`) is the composition root and may
reach the producer side lazily, inside the commands that need it.
"""
