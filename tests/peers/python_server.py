"""An MCP server over stdio for the integration tests, written with the `mcp` SDK (2.x)."""

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("goose-api-python-test-server")


@server.tool()
def shout(text: str) -> str:
    """Return the text in capital letters."""
    return text.upper()


@server.tool()
def env(name: str) -> str:
    """Return an environment variable, or <unset>."""
    return os.environ.get(name, "<unset>")


if __name__ == "__main__":
    server.run()
