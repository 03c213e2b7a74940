"""A client on the official MCP Python SDK against a gateway's MCP endpoint (Streamable HTTP), as the
end-to-end tests drive it: `python client.py URL TOKEN`. Prints one JSON object with what it saw."""

import json
import sys

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def sampling(context, params):
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="hi from python"), model="test-model"
        )

    async def elicitation(context, params):
        return types.ElicitResult(action="accept", content={"name": "python"})

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write, sampling_callback=sampling, elicitation_callback=elicitation) as s:
                await s.initialize()
                text = lambda result: result.content[0].text  # noqa: E731
                counted = await s.call_tool("count", {"n": 3}, progress_callback=on_progress)
                sampled = await s.call_tool("ask_model", {})
                elicited = await s.call_tool("ask_person", {})
                print(
                    json.dumps(
                        {"progress": progress, "counted": text(counted), "sampled": text(sampled), "elicited": text(elicited)}
                    )
                )


anyio.run(main, sys.argv[1], sys.argv[2])
