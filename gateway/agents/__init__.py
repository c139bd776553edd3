"""Agent-native identity (issue 16 onward): genesis of agent credentials and their caveats.

* :mod:`.genesis` -- ``POST /agents/credentials`` (a route of ``kind: agent_credentials``):
  reads the request, mints the root credential after the PDP allowed ``credential.issue``;
* :mod:`.caveats` -- the restrictions of a verified chain checked against the route.

The credential format and chain rules live in :mod:`gateway.sdk.agent` (agents import it to
derive offline); verification is the ``agent_credential`` authentication method.
"""
