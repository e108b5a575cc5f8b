"""The shipped config groups, the schema and ``recipe.compose`` / ``recipe.build_client``.

Options are discovered from the files in ``conf/``, never listed by hand: a new option is
tested as soon as its file exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

import recipe
from recipe.config import paths
from recipe.config.compose import resolved_container
from recipe.engine.plan import compose
from recipe.errors import ConfigError

CONF = paths.config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def model_defaults(option: str) -> dict[str, str]:
    """What a model file names in its defaults list: {"backend": "nim", ...}."""
    data = yaml.safe_load((CONF / "model" / f"{option}.yaml").read_text())
    chosen = {}
    for entry in data.get("defaults", []):
        (key, value), = entry.items()
        assert key.startswith("override /"), f"model/{option}.yaml: {entry} is not an override"
        chosen[key.removeprefix("override /")] = value
    return chosen


@pytest.fixture
def keys(monkeypatch):
    """API keys for every backend, so that ${oc.env:...} resolves."""
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


def test_every_group_has_options():
    assert options("model") and options("backend") and options("formatter") and options("sampling")
    for group, required in (("model", {"smollm2", "nemotron", "nemotron_reward", "llama3", "mixtral", "gpt4o"}),
                            ("backend", {"nim", "openai", "vllm", "ollama", "llamacpp"}),
                            ("formatter", {"none", "nemotron", "mixtral", "chat_template"}),
                            ("sampling", {"default", "greedy", "creative"})):
        assert required <= set(options(group)), group


def test_default_is_smollm2_on_the_embedded_server():
    cfg = compose()
    assert cfg.model.name == "smollm2"
    assert cfg.backend.provider == "hosted_vllm" and cfg.backend.api_base is None
    assert cfg.backend.start_local_server is True
    assert cfg.formatter._target_ is None
    assert OmegaConf.to_container(cfg.sampling) == OmegaConf.to_container(compose(["sampling=default"]).sampling)
    # the default run is a complete choice of its own and +model=smollm2 picks the same things
    explicit = compose(["+model=smollm2"])
    for section in ("backend", "formatter", "sampling", "recipe"):
        assert cfg[section] == explicit[section], section
    assert explicit.model.name == "smollm2"


def test_top_level_keys():
    cfg = compose()
    assert cfg.input is None and cfg.output_dir is None
    assert cfg.dask.address is None and cfg.dask.n_workers == 0
    assert cfg.cache.enabled is True
    assert cfg.cache.dir == os.environ["RECIPE_CACHE_DIR"]  # set per test by conftest
    assert "stages" in cfg.recipe
    primary = yaml.safe_load((CONF / "config.yaml").read_text())
    assert primary["hydra"]["job"]["chdir"] is False
    assert "RECIPE_RUNS_DIR" in primary["hydra"]["run"]["dir"]


@pytest.mark.parametrize("option", options("model"))
def test_model_option_is_a_complete_choice(option, keys):
    chosen = model_defaults(option)
    assert set(chosen) == {"backend", "formatter", "sampling"}, f"model/{option}.yaml must name all three"
    cfg = compose([f"+model={option}"])
    expected = yaml.safe_load((CONF / "model" / f"{option}.yaml").read_text())["model"]
    assert cfg.model.name == expected["name"]
    for group, value in chosen.items():
        assert value in options(group), f"model/{option}.yaml names a missing {group}/{value}"
        assert cfg[group] == compose([f"{group}={value}"])[group], group
    spec = recipe.ClientSpec.from_config(cfg)
    assert spec.model == expected["name"] and spec.provider == cfg.backend.provider


def test_model_choices_can_each_be_overridden(keys):
    cfg = compose(["+model=nemotron", "backend=openai", "formatter=nemotron", "sampling=greedy",
                   "sampling.temperature=0.2", "backend.max_concurrency=32"])
    assert cfg.model.name == "nvidia/llama-3.1-nemotron-70b-instruct"
    assert cfg.backend.provider == "openai"
    assert cfg.formatter._target_.endswith("NemotronFormatter")
    assert cfg.sampling.temperature == 0.2 and cfg.sampling.seed == 0  # greedy, then the override
    assert cfg.backend.max_concurrency == 32


def test_nemotron_is_on_nim(keys):
    cfg = compose(["+model=nemotron"])
    assert cfg.backend.provider == "nvidia_nim"
    assert cfg.backend.api_base == "https://integrate.api.nvidia.com/v1"
    assert resolved_container(cfg)["backend"]["api_key"] == "nvapi-test"
    assert OmegaConf.to_container(cfg.backend)["api_key"] == "${oc.env:NVIDIA_API_KEY}"  # never a literal


@pytest.mark.parametrize("option", options("backend"))
def test_backend_option(option, keys):
    cfg = compose([f"backend={option}"])
    backend = resolved_container(cfg)["backend"]
    for key in ("provider", "api_base", "api_key", "timeout", "num_retries", "max_concurrency", "rpm", "tpm"):
        assert key in backend, f"backend/{option}.yaml: {key}"
    assert backend["provider"]
    raw = yaml.safe_load((CONF / "backend" / f"{option}.yaml").read_text())
    key = raw.get("api_key")
    assert key is None or "${" in key or key == "local-no-key", f"backend/{option}.yaml has a literal api_key"
    spec = recipe.ClientSpec.from_config(cfg)
    assert spec.provider == backend["provider"]
    assert "api_key" not in repr(spec) and "nvapi-test" not in repr(spec) and "sk-test" not in repr(spec)


def test_backend_keys_come_from_the_environment(keys):
    assert resolved_container(compose(["backend=nim"]))["backend"]["api_key"] == "nvapi-test"
    openai = resolved_container(compose(["backend=openai", "backend.api_base=http://127.0.0.1:1/v1"]))["backend"]
    assert openai["api_key"] == "sk-test" and openai["api_base"] == "http://127.0.0.1:1/v1"


def test_missing_key_is_one_line(monkeypatch):
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    cfg = compose(["+model=nemotron"])  # composing needs no key
    with pytest.raises(ConfigError) as info:
        resolved_container(cfg)
    assert "NVIDIA_API_KEY" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("option", options("formatter"))
def test_formatter_option(option):
    cfg = compose([f"formatter={option}"])
    spec = recipe.ClientSpec.from_config(cfg)
    formatter = spec.conversation_formatter
    if option == "none":
        assert formatter is None
    else:
        assert formatter is not None
        text = formatter.format_conversation([{"role": "user", "content": "Hi there"}])
        assert "Hi there" in text


@pytest.mark.parametrize("option", options("sampling"))
def test_sampling_option(option):
    sampling = OmegaConf.to_container(compose([f"sampling={option}"]).sampling)
    assert set(sampling) == {"temperature", "top_p", "top_k", "max_tokens", "n", "seed", "stop",
                             "reasoning_effort", "thinking_budget"}  # the reasoning controls: null unless set


@pytest.mark.parametrize("option", sorted(p.stem for p in paths.recipes_dir().glob("*.yaml")))
def test_recipe_option(option):
    cfg = compose([f"recipe={option}"])
    assert cfg.recipe.stages, option


@pytest.mark.parametrize("override, key", [
    ("sampling.temperature=-0.1", "sampling.temperature"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_p=1.01", "sampling.top_p"),
    ("sampling.n=0", "sampling.n"),
    ("sampling.max_tokens=0", "sampling.max_tokens"),
    ("backend.max_concurrency=0", "backend.max_concurrency"),
])
def test_out_of_range_values_are_refused(override, key):
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize("override", ["sampling.temperature=0", "sampling.top_p=1", "sampling.n=1",
                                      "sampling.max_tokens=1", "sampling.top_p=0.01"])
def test_edge_values_are_accepted(override):
    compose([override])


@pytest.mark.parametrize("override, needle", [
    ("sampling.tempurature=0.5", "tempurature"),  # a typo: Hydra refuses at composition
    ("+sampling.foo=1", "sampling.foo"),  # Hydra lets + add keys to typed nodes: the schema refuses
    ("+backend.secret=1", "backend.secret"),
    ("+foo=1", "foo"),
    ("sampling.n=abc", "abc"),
    ("sampling.temperature=[", "temperature"),
    ("+model=nope", "model/nope"),
    ("model=nope", "model/nope"),  # without + as with it
    ("recipe=nope", "recipe/nope"),
])
def test_mistakes_are_one_clear_line(override, needle):
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert "HYDRA_FULL_ERROR" not in message and "full_key" not in message


def test_bad_type_names_the_reason():
    with pytest.raises(ConfigError, match="could not be converted"):
        compose(["sampling.max_tokens=warm"])
    # temperature and top_p also take a distribution ({uniform: [lo, hi]}): the schema's own check names it
    with pytest.raises(ConfigError, match="sampling.temperature='warm': must be a number"):
        compose(["sampling.temperature=warm"])


def test_compose_keeps_cwd_and_writes_nothing(tmp_path, monkeypatch):
    from hydra.core.global_hydra import GlobalHydra

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = recipe.compose(overrides=["sampling=greedy"])
    assert isinstance(cfg, DictConfig) and cfg.sampling.temperature == 0.0
    assert os.getcwd() == str(work)
    assert list(work.iterdir()) == []
    assert not GlobalHydra.instance().is_initialized()


def test_compose_restores_an_enclosing_hydra(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "app.yaml").write_text("x: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        before = GlobalHydra.instance().hydra
        recipe.compose(overrides=[])
        assert GlobalHydra.instance().is_initialized() and GlobalHydra.instance().hydra is before


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """A user's own config dir with a model and a recipe."""
    root = tmp_path / "myconf"
    (root / "model").mkdir(parents=True)
    (root / "recipe").mkdir()
    (root / "model" / "mine.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /backend: vllm\n  - override /formatter: none\n  - override /sampling: greedy\n"
        "model:\n  name: my-org/my-model\n  context_length: 8192\n")
    (root / "recipe" / "shout.yaml").write_text(
        (paths.recipes_dir() / "generate.yaml").read_text().replace("name: generate", "name: shout"))
    return root


def test_user_config_dir_through_searchpath(user_conf):
    cfg = recipe.compose(overrides=[f"hydra.searchpath=[file://{user_conf}]", "+model=mine", "recipe=shout"])
    assert cfg.model.name == "my-org/my-model" and cfg.model.context_length == 8192
    assert cfg.backend.provider == "hosted_vllm" and cfg.sampling.temperature == 0.0
    assert cfg.recipe.name == "shout"


def test_user_config_dir_as_config_dirs(user_conf):
    cfg = recipe.compose(overrides=["+model=mine"], config_dirs=[str(user_conf)])
    assert cfg.model.name == "my-org/my-model"
    with pytest.raises(ConfigError, match="not found"):
        recipe.compose(config_dirs=[str(user_conf / "missing")])


def test_user_model_does_not_inherit_the_default_models_context(tmp_path):
    root = tmp_path / "c"
    (root / "model").mkdir(parents=True)
    (root / "model" / "bare.yaml").write_text("# @package _global_\nmodel:\n  name: bare\n")
    cfg = recipe.compose(overrides=["+model=bare"], config_dirs=[str(root)])
    assert cfg.model.name == "bare" and cfg.model.context_length is None


def test_build_client_from_dictconfig_and_dict(keys):
    from recipe.clients.litellm_client import AsyncLiteLLMClient, LiteLLMClient

    cfg = compose(["backend=openai", "backend.api_base=http://127.0.0.1:1/v1"])
    sync = recipe.build_client(cfg)
    assert isinstance(sync, LiteLLMClient)
    plain = resolved_container(cfg)
    async_client = recipe.build_client(plain, asynchronous=True)
    assert isinstance(async_client, AsyncLiteLLMClient)
    assert async_client.provider == "openai" and async_client.api_base == "http://127.0.0.1:1/v1"
    assert "sk-test" not in repr(sync) and "sk-test" not in repr(async_client)


def test_known_providers_are_litellm_providers_and_cover_every_shipped_backend():
    """The precheck trusts KNOWN_PROVIDERS without importing litellm: each must be one of litellm's."""
    from recipe.engine.preflight import KNOWN_PROVIDERS
    from recipe.clients.litellm_setup import get_litellm

    litellm_providers = {getattr(p, "value", p) for p in get_litellm().provider_list}
    assert KNOWN_PROVIDERS <= litellm_providers, KNOWN_PROVIDERS - litellm_providers
    shipped = {yaml.safe_load(f.read_text())["provider"] for f in (paths.config_dir() / "backend").glob("*.yaml")}
    assert shipped and shipped <= KNOWN_PROVIDERS, shipped - KNOWN_PROVIDERS


def test_the_precheck_of_a_shipped_backend_does_not_import_litellm(tmp_path):
    """A run on Dask workers starts its cluster before the driver pays for ``import litellm`` (2 s);
    an unknown provider is still checked against litellm's list."""
    import subprocess
    import sys

    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    code = ("import sys\nfrom recipe.cli.precheck import precheck\n"
            f"precheck(['backend=vllm', 'backend.api_base=http://127.0.0.1:9/v1', 'input={source}',"
            f" 'output_dir={tmp_path / 'out'}'])\n"
            "print('litellm' in sys.modules)\n"
            "try:\n"
            "    precheck(['backend=vllm', 'backend.provider=nosuchprovider'])\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, 'litellm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "ConfigError", "True"], out.stdout
