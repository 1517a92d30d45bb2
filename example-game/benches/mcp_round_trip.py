"""The MCP tools' round trips on the example game's sprites, from the official Python SDK
client (`pip install mcp`), with the game running: run by `benches/live_loop.rs`.

    python mcp_round_trip.py CARGO_PIXELGEN CRATE_CARGO_TOML GAME_PORT ROUNDS

Prints JSON: {tool: [milliseconds per round]}; each round edits the grass prompt,
generates it (the game is asked to reload), previews it and takes a screenshot.
"""

import asyncio
import json
import sys
import time

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


async def main(binary, manifest, game_port, rounds):
    params = StdioServerParameters(
        command=binary,
        args=["pixelgen", "mcp", "--manifest-path", manifest, "--game-port", game_port],
    )
    timings = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for round_ in range(rounds):
                calls = [
                    ("list_sprites", {}),
                    ("set_sprite", {"name": "grass", "prompt": f"green grass tile with stones {round_}"}),
                    ("generate", {}),
                    ("preview_sprite", {"name": "grass"}),
                    ("screenshot", {}),
                ]
                for name, arguments in calls:
                    started = time.perf_counter()
                    result = await session.call_tool(name, arguments)
                    took = (time.perf_counter() - started) * 1000
                    if result.is_error:
                        text = " ".join(c.text for c in result.content if c.type == "text")
                        raise SystemExit(f"{name} failed: {text}")
                    if name == "generate":
                        text = " ".join(c.text for c in result.content if c.type == "text")
                        assert "the game: reloaded" in text, text
                    timings.setdefault(name, []).append(round(took, 1))
    print(json.dumps(timings))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
