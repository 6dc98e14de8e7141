"""Simulated agent pods for ``agentstream demo`` and ``agentstream up``: a pure scenario
planner (:mod:`.scenario`, seed → sessions) and the pods that play it through the public
producer API (:mod:`.pods`)."""
