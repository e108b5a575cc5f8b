"""``python -m recipe`` as a user runs it: a subprocess, in a scratch working directory.

User mistakes must give one line on stderr, a non-zero exit and no traceback. Runs go to a
local OpenAI-compatible stub server that checks the API key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import recipe
from recipe.config import paths

from conftest import SRC, cli, cli_env, error_rows, outputs

SECRET = "sk-test-SECRET123"


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def model_options() -> list[str]:
    return sorted(p.stem for p in (paths.config_dir() / "model").glob("*.yaml"))


def test_help(tmp_path):
    result = cli(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert "+model=" in result.stdout
    assert "model: " + ", ".join(model_options()) in result.stdout
    assert "Traceback" not in result.stderr


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = cli(tmp_path, "--cfg", "job", "+model=nemotron", env={"NVIDIA_API_KEY": "nvapi-SECRET456"})
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["name"] == "nvidia/llama-3.1-nemotron-70b-instruct"
    assert cfg["backend"]["provider"] == "nvidia_nim"
    assert cfg["backend"]["api_base"] == "https://integrate.api.nvidia.com/v1"
    assert cfg["backend"]["api_key"] == "${oc.env:NVIDIA_API_KEY}"
    assert "nvapi-SECRET456" not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists() and list((tmp_path / "cwd").iterdir()) == []


@pytest.mark.parametrize("name", ["math", "open_qa"])
def test_cfg_job_resolve_prints_list_schemas(tmp_path, name):
    """``--resolve`` writes each ``${list_schema:...}`` back into the config as a mapping."""
    result = cli(tmp_path, "--cfg", "job", "--resolve", f"recipe={name}", "recipe.n_macro_topics=4")
    assert result.returncode == 0, result.stderr
    schema = yaml.safe_load(result.stdout)["recipe"]["stages"]["macro_topics"]["schema"]
    assert schema["properties"]["items"]["minItems"] == schema["properties"]["items"]["maxItems"] == 4


def test_any_key_can_be_overridden(tmp_path):
    result = cli(tmp_path, "--cfg", "job", "sampling.temperature=0.2", "backend.max_concurrency=32",
                 "recipe=math", "+model=llama3", "dask.n_workers=2")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["sampling"]["temperature"] == 0.2 and cfg["backend"]["max_concurrency"] == 32
    assert cfg["recipe"]["name"] == "math" and cfg["model"]["name"] == "meta/llama-3.1-70b-instruct"
    assert cfg["dask"]["n_workers"] == 2


def test_cfg_job_without_key_still_prints(tmp_path):
    """No NVIDIA_API_KEY in the environment (cli_env removes it): ``--cfg job`` prints the config,
    the key still the unresolved reference, where a run would refuse to start (MISTAKES below)."""
    result = cli(tmp_path, "--cfg", "job", "+model=nemotron")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["name"] == "nvidia/llama-3.1-nemotron-70b-instruct"
    assert cfg["backend"]["api_key"] == "${oc.env:NVIDIA_API_KEY}"


def test_cfg_hydra_keeps_chdir_off(tmp_path):
    result = cli(tmp_path, "--cfg", "hydra")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["hydra"]["job"]["chdir"] is False


MISTAKES = [
    pytest.param(["sampling.temperature=["], {}, "sampling.temperature=[", id="bad-override-syntax"),
    pytest.param(["+model=nope"], {}, "model/nope", id="unknown-option"),
    pytest.param(["model=nemotron"], {}, "NVIDIA_API_KEY", id="model-without-plus-missing-key"),
    pytest.param(["model=nope"], {}, "model/nope", id="unknown-option-without-plus"),
    pytest.param(["model=null"], {}, "model=null: Config group override", id="group-set-to-null"),
    pytest.param(["--cfg", "job", "sampling=null"], {}, "sampling=null: ", id="cfg-group-set-to-null"),
    pytest.param(["sampling.temperature=-1"], {}, "sampling.temperature", id="bad-value"),
    pytest.param(["sampling.top_p=1.5"], {}, "sampling.top_p", id="bad-top-p"),
    pytest.param(["sampling.n=abc"], {}, "could not be converted", id="bad-type"),
    pytest.param(["sampling.tempurature=0.5"], {}, "tempurature", id="typo-key"),
    pytest.param(["+sampling.foo=1"], {}, "sampling.foo", id="added-unknown-key"),
    pytest.param(["+model=nemotron"], {}, "NVIDIA_API_KEY", id="missing-nvidia-key"),
    pytest.param(["-m", "+model=nemotron"], {}, "NVIDIA_API_KEY", id="missing-key-multirun"),
    pytest.param(["input=missing.jsonl", "backend=openai", "backend.api_base=http://127.0.0.1:9/v1"],
                 {"OPENAI_API_KEY": SECRET}, "missing.jsonl", id="missing-input-file"),
    pytest.param(["-m", "sampling.temperature=0.2,-1"], {}, "sampling.temperature", id="bad-sweep-value"),
    pytest.param(["-m", "sampling.temperature=0.2,abc"], {}, "sampling.temperature='abc': must be a number", id="bad-sweep-type"),
    pytest.param(["--cfg", "job", "sampling.temperature=abc"], {}, "sampling.temperature='abc': must be a number", id="cfg-bad-type"),
    pytest.param(["--cfg", "job", "-m", "+model=nemotron"], {}, "cannot be combined", id="cfg-and-multirun"),
    pytest.param(["--config-dir", "/nonexistent/recipe-conf"], {}, "/nonexistent/recipe-conf", id="missing-config-dir"),
    pytest.param(["sampling.temperature=0.2,0.8"], {}, "--multirun", id="sweep-without-multirun"),
    pytest.param(["backend=openai", "--config-dir", "/tmp", "recipe=math"], {}, "unrecognized arguments: recipe=math",
                 id="override-after-an-option-after-overrides"),
    pytest.param(["--resolve", "sampling.temperature=0.2"], {}, "--resolve goes with --cfg", id="resolve-without-cfg"),
]


@pytest.mark.parametrize("args, env, needle", MISTAKES)
def test_user_mistakes_are_refused_by_the_pre_run_check(tmp_path, monkeypatch, args, env, needle):
    """Each mistake, in-process: the check the CLI runs before Hydra refuses it in one line (the
    CLI prints it as ``error: ...`` with exit code 2: the smoke tests below)."""
    from recipe.cli.precheck import precheck
    from recipe.config.compose import setup
    from recipe.errors import ConfigError

    for name in ("NVIDIA_API_KEY", "OPENAI_API_KEY", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    setup()
    with pytest.raises(ConfigError) as refused:
        precheck(list(args))
    message = str(refused.value)
    assert needle in message and "\n" not in message and SECRET not in message, message
    assert not (tmp_path / "runs").exists() and list(cwd.iterdir()) == []


def _composed_by_hydra_run(argv: list[str], config_dir: Path | None):
    """The config ``Hydra.run`` composes for ``argv``, with the search path ``@hydra.main`` builds
    (``--config-dir`` prepended before the schema provider) and the ``hydra.mode=RUN`` it adds."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from recipe.config.compose import model_choice

    search_path = create_automatic_config_search_path(None, None, str(paths.config_dir()))
    if config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{config_dir}", anchor=SearchPathQuery(provider="schema"))
    hydra = Hydra.create_main_hydra2(task_name="recipe", config_search_path=search_path)
    try:
        return hydra.compose_config("config", model_choice(argv) + ["hydra.mode=RUN"], run_mode=RunMode.RUN)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("own_dir", [False, True], ids=["shipped", "config-dir"])
def test_a_plain_run_is_given_the_config_hydra_run_composes(tmp_path, monkeypatch, own_dir):
    """A plain run hands the pre-run check's config to Hydra's job runner instead of composing it
    twice more (recipe.cli.hydra_job): it is the config Hydra.run composes, Hydra's node included.
    With ``--config-dir`` only the record of how the dir was added differs (an override, where
    ``@hydra.main`` adds a provider); the dirs are searched in the same order."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from recipe.cli.precheck import precheck
    from recipe.config.compose import setup

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    overrides = ["backend=openai", f"input={tmp_path / 'p.jsonl'}", "sampling.temperature=0.3", "+model=gpt4o"]
    flags: list[str] = []
    if own_dir:
        (tmp_path / "conf" / "recipe").mkdir(parents=True)
        (tmp_path / "conf" / "recipe" / "mine.yaml").write_text("defaults:\n  - open_qa\n  - _self_\nname: mine\n")
        overrides.append("recipe=mine")
        flags = ["--config-dir", str(tmp_path / "conf")]
    setup()
    ours = precheck(flags + overrides)
    assert ours is not None and ours.hydra.mode == RunMode.RUN
    ours, theirs = (OmegaConf.to_container(c) for c in (ours, _composed_by_hydra_run(overrides, tmp_path / "conf" if own_dir else None)))
    if own_dir:
        assert ours["recipe"]["name"] == "mine" and ours["hydra"]["runtime"]["choices"]["recipe"] == "mine"
        for composed in (ours, theirs):  # the providers' names differ; paths and order are compared below
            for source in composed["hydra"]["runtime"]["config_sources"]:
                source.pop("provider")
        assert ours["hydra"].pop("searchpath") == [f"file://{tmp_path / 'conf'}"] and theirs["hydra"].pop("searchpath") == []
        assert ours["hydra"]["overrides"]["hydra"].pop(0) == f"hydra.searchpath=['file://{tmp_path / 'conf'}']"
    assert ours == theirs


SMOKE = [case for case in MISTAKES if case.id in ("bad-override-syntax", "missing-input-file")]


@pytest.mark.smoke
@pytest.mark.parametrize("args, env, needle", SMOKE)
def test_user_mistakes_are_one_line(tmp_path, args, env, needle):
    result = cli(tmp_path, *args, env=env)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "HYDRA_FULL_ERROR" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert needle in errors[0]
    assert SECRET not in result.stderr + result.stdout
    # refused before Hydra made a run dir, and nothing in the working directory
    assert not (tmp_path / "runs").exists()
    assert list((tmp_path / "cwd").iterdir()) == []


@pytest.fixture
def questions(tmp_path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    path = cwd / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": q, "id": i}) + "\n"
                            for i, q in enumerate(["What is 2+2?", "Capital of France?", "Why is the sky blue?"])))
    return path


STUB_ARGS = ["backend=openai", "backend.start_local_server=false", "model.name=my-model", "progress=false"]


def test_run_against_an_openai_compatible_server(tmp_path, stub_server, questions):
    server = stub_server(api_key=SECRET)
    result = cli(tmp_path, "recipe=generate", "input=questions.jsonl",  # relative to the cwd
                 "recipe.prompt='Answer briefly: {{ question }}'",
                 f"backend.api_base={server.base_url}", *STUB_ARGS, env={"OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    # where the output went and a one-line summary
    output_line = next(line for line in result.stdout.splitlines() if line.startswith("output: "))
    output_dir = Path(output_line.removeprefix("output: "))
    assert output_dir.is_dir() and (tmp_path / "runs") in output_dir.parents
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("3 records, 0 failed, 3 requests") and "tokens" in summary and summary.endswith(" s")

    # results: part files, every input field kept, a response added
    records = outputs(output_dir)
    assert sorted(r["id"] for r in records) == [0, 1, 2]
    for record in records:
        assert record["question"] and "Answer briefly: " + record["question"] in record["response"]
    assert error_rows(output_dir) == []

    # the key reached the server, and never the disk or the terminal
    stats = server.stats()
    assert f"Bearer {SECRET}" in stats["auth_headers"]
    assert {body["model"] for body in stats["bodies"]} == {"my-model"}
    files = all_files(tmp_path / "runs")
    assert output_dir / ".hydra" / "config.yaml" in files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr

    # nothing written to the working directory but what was there
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["questions.jsonl"]


def test_multirun_over_two_temperatures(tmp_path, stub_server):
    server = stub_server(api_key=SECRET)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "prompts.jsonl").write_text('{"prompt": "Say hi"}\n{"prompt": "Say bye"}\n')
    result = cli(tmp_path, "-m", "sampling.temperature=0.2,0.8", "input=prompts.jsonl",
                 f"backend.api_base={server.base_url}", *STUB_ARGS, env={"OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    folders = [Path(line.removeprefix("output: ")) for line in result.stdout.splitlines()
               if line.startswith("output: ")]
    assert len(folders) == 2 and len(set(folders)) == 2
    for output_dir in folders:
        records = outputs(output_dir)
        assert len(records) == 2 and all(r["response"] for r in records)
        assert (output_dir / ".hydra" / "config.yaml").is_file()
    temperatures = sorted(body["temperature"] for body in server.stats()["bodies"])
    assert temperatures == [0.2, 0.2, 0.8, 0.8]
    for path in all_files(tmp_path / "runs"):
        assert SECRET.encode() not in path.read_bytes(), path
    assert sorted(p.name for p in cwd.iterdir()) == ["prompts.jsonl"]


@pytest.mark.parametrize("choice", ["+model=nemotron", "model=nemotron"])
def test_model_option_with_or_without_plus(tmp_path, choice):
    result = cli(tmp_path, "--cfg", "job", choice, "recipe=math")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    nemotron = yaml.safe_load((paths.config_dir() / "model" / "nemotron.yaml").read_text())
    # the option's keys, over config.yaml's neutral ones (name, context_length, description)
    assert {key: cfg["model"][key] for key in nemotron["model"]} == nemotron["model"]
    assert cfg["backend"]["provider"] == "nvidia_nim"  # its `override /backend: nim` applied
    assert cfg["recipe"]["name"] == "math"


def test_sweep_over_model_options_with_plus(tmp_path, stub_server):
    server = stub_server(api_key=SECRET)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "prompts.jsonl").write_text('{"prompt": "Say hi"}\n')
    # each option brings its own model.name; backend=openai on the command line wins over its backend
    result = cli(tmp_path, "-m", "+model=gpt4o,llama3", "input=prompts.jsonl", "backend=openai",
                 "backend.start_local_server=false", f"backend.api_base={server.base_url}", "progress=false", env={"OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("output: ")]) == 2
    assert sorted(body["model"] for body in server.stats()["bodies"]) == ["gpt-4o", "meta/llama-3.1-70b-instruct"]


def test_help_and_cfg_job_do_not_import_litellm_or_dask(tmp_path):
    for args in (["--help"], ["--cfg", "job"]):
        cwd = tmp_path / "cwd"
        cwd.mkdir(exist_ok=True)
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "recipe", *args], cwd=cwd,
                                env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "hydra" in imported and "recipe.config.compose" in imported, args  # the report is real
        assert not {name for name in imported if name.split(".")[0] in ("litellm", "openai", "dask", "distributed")}, args


def test_no_hydra_internals_in_the_package():
    # Hydra's private modules and singletons change between releases; only its public API is used
    sources = sorted(Path(SRC, "recipe").rglob("*.py"))
    assert len(sources) > 10
    offenders = [str(p) for p in sources
                 if "hydra._internal" in p.read_text() or "Singleton._instances" in p.read_text()]
    assert offenders == []


def test_compose_searches_config_dirs_and_a_searchpath_override(tmp_path):
    # recipe.compose's twin of `--config-dir A 'hydra.searchpath=[file://B]'`: both dirs are searched
    for name, option in (("a", "from_a"), ("b", "from_b")):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / f"{option}.yaml").write_text(
            f"# @package _global_\nmodel:\n  name: {option}-model\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'b'}]"
    for choice, expected in (("+model=from_a", "from_a-model"), ("model=from_b", "from_b-model")):
        cfg = recipe.compose([searchpath, choice], config_dirs=[str(tmp_path / "a")])
        assert cfg.model.name == expected
