"""A real MCP client (the official Python SDK, `pip install mcp`) driving
`cargo pixelgen mcp` on a game crate: lists the tools and calls each.

    python client.py CARGO_PIXELGEN CRATE_CARGO_TOML GAME_PORT

Prints one JSON object: the tool names and schemas; per call its error flag, its text, the
sizes of the images it returned, the progress notifications it received and the round-trip
time in milliseconds; the resources listed and what reading them gave.
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


async def main(binary, manifest, game_port):
    params = StdioServerParameters(
        command=binary,
        args=["pixelgen", "mcp", "--manifest-path", manifest, "--game-port", game_port],
    )
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
                ("set_sprite", {"name": "coin", "prompt": "copper coin"}),
                ("generate", {"sprites": ["coin"]}),
                ("generate", {"sprites": ["dragon"]}),
                ("generate", {}),
                ("screenshot", {}),
            ]
            for name, arguments in calls:
                progress = []

                async def on_progress(done, total, message, progress=progress):
                    progress.append([done, total, message])

                started = time.perf_counter()
                result = await session.call_tool(name, arguments, progress_callback=on_progress)
                took = (time.perf_counter() - started) * 1000
                texts = [c.text for c in result.content if c.type == "text"]
                images = [png_size(c.data) for c in result.content if c.type == "image"]
                out["calls"].append({
                    "tool": name, "arguments": arguments, "error": bool(result.is_error),
                    "text": "\n".join(texts), "images": images, "ms": round(took, 1),
                    "progress": progress,
                })
            listed = await session.list_resources()
            out["resources"] = [[r.uri, r.mime_type] for r in listed.resources]
            out["read"] = {}
            for uri in [r.uri for r in listed.resources] + ["pixelgen://atlas/main/9.png"]:
                try:
                    read = await session.read_resource(uri)
                    content = read.contents[0]
                    if getattr(content, "text", None) is not None:
                        out["read"][uri] = {"text": content.text}
                    else:
                        out["read"][uri] = {"png": png_size(content.blob)}
                except Exception as error:  # the server's error, as the client raises it
                    out["read"][uri] = {"error": str(error)}
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
