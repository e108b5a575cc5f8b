"""Client overhead: AsyncLiteLLMClient.query_model against the raw openai SDK.

A zero-latency stub server on 127.0.0.1, concurrency 1 and 64, 3000 requests each. The raw
SDK with a semaphore is the baseline; the ratio is ours / raw (goal at 64: >= 0.8).

    python bench/overhead.py [--smoke] [--profile]
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import banner, report, save, small, timed  # noqa: E402

from recipe.services.event_loop import run_sync  # noqa: E402
from recipe.testing.stub_server import StubServer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something short."}]


async def raw_sdk(base_url: str, total: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            r = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16)
            return r.choices[0].message.content

    with timed() as t:
        await asyncio.gather(*(one() for _ in range(total)))
    await client.close()
    return total / t["seconds"]


async def ours(base_url: str, total: int, concurrency: int, provider: str = "hosted_vllm") -> float:
    from recipe.services.litellm_client import AsyncLiteLLMClient

    client = AsyncLiteLLMClient(provider=provider, api_base=base_url, api_key="k", max_concurrency=concurrency,
                                num_retries=0)
    await client.query_model(messages=MESSAGES, model="m", max_tokens=16)  # warm-up: imports, connections
    with timed() as t:
        await asyncio.gather(*(client.query_model(messages=MESSAGES, model="m", max_tokens=16) for _ in range(total)))
    return total / t["seconds"]


def main() -> None:
    banner("overhead")
    total = 200 if small() else 3000
    results = []
    # Everything runs on the process's one background loop, as in the stages (litellm binds its
    # logging worker to one loop); each measurement alternates with its baseline.
    with StubServer() as server:
        from recipe.services.litellm_setup import get_litellm

        get_litellm()
        run_sync(raw_sdk(server.base_url, 50, 8))  # warm-up
        for concurrency in (1, 64):
            base = run_sync(raw_sdk(server.base_url, total, concurrency))
            report(f"raw openai SDK, concurrency {concurrency}", base, base, "req/s")
            for provider in ("hosted_vllm", "openai"):
                mine = run_sync(ours(server.base_url, total, concurrency, provider))
                results.append(report(f"AsyncLiteLLMClient {provider}/, concurrency {concurrency}", mine, base, "req/s"))
        if "--profile" in sys.argv:
            profiler = cProfile.Profile()

            async def profiled():
                profiler.enable()  # cProfile is per thread: enable it on the loop's thread
                try:
                    return await ours(server.base_url, total, 64)
                finally:
                    profiler.disable()

            run_sync(profiled())
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    save("overhead", results)


if __name__ == "__main__":
    main()
