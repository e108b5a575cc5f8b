"""Every provider and route recipe knows, in one table: routes, connection defaults, wire quirks, structured output, batch API.

A *provider* is what a config names (``backend.provider``, litellm's prefix). A *route* is the
litellm prefix a request is actually sent under: a formatted prompt leaves the provider's chat
route for a text-completions route (``openai`` -> ``text-completion-openai``), and ``ollama``
chats under ``ollama_chat``. The lean HTTP path, the litellm client, structured output, the batch
collector and the pre-run check all read this module; none keeps a table of its own.

A provider litellm knows but this table does not (``groq``, ``together_ai``, ...) still works: it
chats under its own name, sends formatted prompts to OpenAI's text route, gets no structured-output
wire form unless ``backend.structured_output`` names one, and is sent through litellm, not the lean path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

OPENAI_BASE = "https://api.openai.com/v1"
NIM_BASE = "https://integrate.api.nvidia.com/v1"


@dataclass(frozen=True)
class Route:
    """How recipe speaks one litellm route."""

    lean: bool = False  # OpenAI's JSON over HTTP with a bearer key, no signing: recipe's own aiohttp path
    openai_compatible: bool = False  # top_k rides in the body; a keyless server still gets a placeholder key
    allowlist: bool = False  # litellm filters every param through allowed_openai_params (max_retries, n, ...)
    env_base: tuple[str, ...] = ()  # where litellm looks for api_base when none is given
    env_key: tuple[str, ...] = ()  # where litellm looks for api_key when none is given
    default_base: str | None = None  # the public endpoint when neither the config nor the environment names one
    version_path: str = ""  # litellm appends it itself (anthropic: /v1 of /v1/messages): an api_base ending in it is cut


@dataclass(frozen=True)
class Provider:
    """One ``backend.provider`` value: its routes, its structured-output dialect and its batch API."""

    chat_route: str
    text_route: str = "text-completion-openai"  # nvidia_nim/ and openai/ would wrap a prompt into a chat message
    structured: str = "none"  # the dialect in clients/structured_output.DIALECTS when backend.structured_output is unset
    batch: str | None = None  # the batch API backend.batch=true goes through: "openai", "anthropic" or None
    tool_choice: bool = True  # whether litellm carries tool_choice to it (ollama_chat drops it: the model chooses)
    env_base: tuple[str, ...] = ()  # the provider's own endpoint, used when a request leaves its chat route
    env_key: tuple[str, ...] = ()
    default_base: str | None = None


_OPENAI_BASE_ENV = ("OPENAI_BASE_URL", "OPENAI_API_BASE")

ROUTES: dict[str, Route] = {
    "openai": Route(lean=True, openai_compatible=True, default_base=OPENAI_BASE, env_base=_OPENAI_BASE_ENV,
                    env_key=("OPENAI_API_KEY",)),
    "text-completion-openai": Route(lean=True, openai_compatible=True, default_base=OPENAI_BASE, env_base=_OPENAI_BASE_ENV,
                    env_key=("OPENAI_API_KEY",)),
    "hosted_vllm": Route(lean=True, openai_compatible=True, env_base=("HOSTED_VLLM_API_BASE",),
                         env_key=("HOSTED_VLLM_API_KEY",)),
    "nvidia_nim": Route(lean=True, openai_compatible=True, allowlist=True, env_base=("NVIDIA_NIM_API_BASE",),
                        env_key=("NVIDIA_NIM_API_KEY",), default_base=NIM_BASE),
    "ollama": Route(),
    "ollama_chat": Route(),
    "anthropic": Route(version_path="/v1"),
}

PROVIDERS: dict[str, Provider] = {
    "openai": Provider(chat_route="openai", structured="openai", batch="openai"),
    # vLLM (and llama.cpp through conf/backend/llamacpp.yaml): its own text route, guided_json on it
    "hosted_vllm": Provider(chat_route="hosted_vllm", text_route="hosted_vllm", structured="vllm", batch="openai"),
    # NVIDIA's API catalog: a prompt goes to OpenAI's text route, at NIM's endpoint with NIM's key
    "nvidia_nim": Provider(chat_route="nvidia_nim", structured="nim", batch="openai",
                           env_base=("NVIDIA_NIM_API_BASE",), env_key=("NVIDIA_NIM_API_KEY",), default_base=NIM_BASE),
    "ollama": Provider(chat_route="ollama_chat", text_route="ollama", structured="ollama", tool_choice=False),
    "anthropic": Provider(chat_route="anthropic", batch="anthropic"),
}


def provider(name: str) -> Provider:
    """The table's entry for ``name``, or the defaults of a provider litellm knows and we don't list."""
    return PROVIDERS.get(name) or Provider(chat_route=name, batch="openai")


def route(name: str) -> Route:
    """The table's entry for route ``name`` (an unlisted route: litellm's own handling, no quirks)."""
    return ROUTES.get(name) or Route()


def api_base_for(name: str, api_base: str | None) -> str | None:
    """``api_base`` as route ``name`` takes it: without the version path litellm appends itself
    (``https://api.anthropic.com/v1`` would become ``/v1/v1/messages``, a 404 on every request)."""
    suffix = route(name).version_path
    if api_base and suffix and api_base.rstrip("/").endswith(suffix):
        return api_base.rstrip("/")[:-len(suffix)]
    return api_base


def first_env(names: tuple[str, ...]) -> str | None:
    """The first of the environment variables ``names`` that is set and not empty."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


KNOWN_PROVIDERS = frozenset(PROVIDERS)  # checked by the pre-run check without importing litellm
