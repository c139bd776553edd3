"""The ``enrich`` stage: facts about the caller that the policy input adds to the request.

It runs after authentication and before ``decide``, only when a PDP is configured (its output
is policy input). Today it adds the caller's behaviour (:mod:`gateway.enrich.behavior`); the
agent registry, MCP and workflow facts join as further enrichers.
"""
