"""The MCP endpoint of ingress (`/mcp`): transport and sessions → methods → the tool call path (access, argument
rules, approvals, agent runs, quotas, price) → the guard → the mcp stage."""
