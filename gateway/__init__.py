"""agentgate: the master-agent gateway, a policy enforcement point for AI-agent domains."""

__version__ = "0.1.0"
