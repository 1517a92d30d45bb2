"""A real MCP client (the official Python SDK, `pip install mcp`) driving
`cargo pixelgen mcp` on a game crate: lists the tools and calls each.

    python client.py CARGO_PIXELGEN CRATE_CARGO_TOML

Prints one JSON object: the tool names, and per call its error flag, its text and the
sizes of the images it returned, with the round-trip time in milliseconds.
"""

import asyncio
import base64
import json
import struct
import sys
import time

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


def png_size(data):
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", raw[16:24])


async def main(binary, manifest):
    params = StdioServerParameters(command=binary, args=["pixelgen", "mcp", "--manifest-path", manifest])
    out = {"calls": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["schemas"] = {t.name: t.input_schema for t in tools.tools}
            calls = [
                ("list_sprites", {}),
                ("get_sprite", {"name": "coin"}),
                ("get_sprite", {"name": "dragon"}),
                ("preview_sprite", {"name": "coin"}),
                ("generate", {}),
                ("list_sprites", {}),
                ("preview_sprite", {"name": "hero", "frame": 1, "scale": 4}),
                ("preview_sprite", {"name": "hero", "frame": 7}),
                ("preview_atlas", {"atlas": "main"}),
                ("set_sprite", {"name": "coin", "prompt": "silver coin"}),
                ("list_sprites", {}),
                ("set_sprite", {"name": "coin", "size": [0, 8]}),
                ("set_sprite", {"name": "gem", "prompt": "green gem", "seed": 4}),
                ("set_sprite", {"name": "potion", "remove": True}),
                ("generate", {}),
                ("variations", {"name": "hero", "count": 3}),
                ("pick", {"name": "hero", "seed": 3}),
                ("list_sprites", {}),
                ("pick", {"name": "dragon", "seed": 3}),
            ]
            for name, arguments in calls:
                started = time.perf_counter()
                result = await session.call_tool(name, arguments)
                took = (time.perf_counter() - started) * 1000
                texts = [c.text for c in result.content if c.type == "text"]
                images = [png_size(c.data) for c in result.content if c.type == "image"]
                out["calls"].append({
                    "tool": name, "arguments": arguments, "error": bool(result.is_error),
                    "text": "\n".join(texts), "images": images, "ms": round(took, 1),
                })
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
