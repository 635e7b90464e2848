"""deploy/: the manifests parse, their Kubernetes objects validate, and every ``dfscan``
command they run is one the real CLI accepts, so a renamed flag fails here and not on a
cluster at 02:00.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from operators.list_videos import expand_date_template
from pipelines.cli import DEFAULT_MODEL, build_parser
from pipelines.window_cli import window_from_args

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RAYJOB = DEPLOY / "ray" / "rayjob.yaml"
CRONJOB = DEPLOY / "k8s" / "cronjob-nightly-scan.yaml"
SECRET = DEPLOY / "k8s" / "secret.example.yaml"
FLEX_METADATA = DEPLOY / "beam" / "flex_template_metadata.json"
FLEX_MAIN = DEPLOY / "beam" / "flex_main.py"
LAUNCH = DEPLOY / "beam" / "launch_dataflow.sh"
DOCKERFILES = sorted(
    p for p in (DEPLOY / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore"
)

KNOWN_RUNNERS = ("local", "ray", "beam")  # issue #3: the engines `--runner` names
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests target (CronJob timeZone is GA)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# Prometheus/Grafana files, not Kubernetes manifests: tests/test_observability.py checks
# them with promtool and a running Prometheus.
OBSERVABILITY = DEPLOY / "observability"


def deploy_files(*patterns: str) -> list[Path]:
    return sorted(
        {p for pat in patterns for p in DEPLOY.rglob(pat) if OBSERVABILITY not in p.parents}
    )


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# ---------------------------------------------------------------- finding dfscan commands
SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")"}
# Words after which the next word is a command again.
COMMAND_PREFIXES = SHELL_OPERATORS | {"exec", "time", "then", "do", "else", "!", "--"}


def shell_words(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def dfscan_commands_in_shell(text: str) -> list[list[str]]:
    """The argument lists of every ``dfscan`` run in shell text (continuations joined)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if "dfscan" not in line or line.lstrip().startswith("#"):
            continue
        words = shell_words(line)
        for i, word in enumerate(words):
            if word != "dfscan" and not word.endswith("/bin/dfscan"):
                continue
            if i > 0 and words[i - 1] not in COMMAND_PREFIXES:
                continue  # an argument (`kubectl -n dfscan`), not the command
            end = next((j for j in range(i + 1, len(words)) if words[j] in SHELL_OPERATORS), None)
            commands.append(words[i + 1 : end])
    return commands


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def containers_in(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "image" in node and "name" in node:
            yield node
        for value in node.values():
            yield from containers_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers_in(value)


def dfscan_commands_in_yaml(doc: dict[str, Any]) -> list[list[str]]:
    commands = []
    # Shell lines anywhere: a RayJob entrypoint, an `sh -c` script.
    for text in strings_in(doc):
        if re.search(r"\s", text):
            commands += dfscan_commands_in_shell(text)
    # Exec form: command: ["dfscan", ...], or args alone under the image's ENTRYPOINT.
    for c in containers_in(doc):
        command, args = c.get("command") or [], c.get("args") or []
        if command and Path(command[0]).name == "dfscan":
            commands.append([*command[1:], *args])
        elif not command and args and "dfscan" in c["image"] and " " not in args[0]:
            commands.append(list(args))
    return commands


def markdown_code(text: str) -> str:
    return "\n".join(re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL))


def dfscan_commands_in(path: Path) -> list[list[str]]:
    if path.suffix in (".yaml", ".yml"):
        return [cmd for doc in load_yaml(path) for cmd in dfscan_commands_in_yaml(doc)]
    if path.suffix == ".md":
        return dfscan_commands_in_shell(markdown_code(path.read_text()))
    return dfscan_commands_in_shell(path.read_text())


COMMAND_SOURCES = deploy_files("*.yaml", "*.yml", "*.sh", "*.md")
COMMANDS = [(path, cmd) for path in COMMAND_SOURCES for cmd in dfscan_commands_in(path)]


@dataclass
class ParsedCommand:
    args: Any
    beam_args: list[str] = field(default_factory=list)


def parse_dfscan(
    argv: list[str], capsys: pytest.CaptureFixture[str] | None = None
) -> ParsedCommand:
    """Parse ``dfscan ARGV`` as ``pipelines.cli.main`` does; fail with the CLI's message."""
    beam_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, beam_args = argv[:cut], argv[cut + 1 :]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        err = capsys.readouterr().err.strip() if capsys else ""
        pytest.fail(f"`dfscan {shlex.join(argv)}` is rejected by the CLI ({exit_.code}): {err}")
    if args.command == "scan":
        assert args.runner in KNOWN_RUNNERS, f"unknown --runner {args.runner!r}"
        if args.ray_address:
            assert args.runner == "ray", "--ray-address without --runner ray"
        if beam_args:
            assert args.runner == "beam", "pipeline options after -- without --runner beam"
        # Images carry no model: a deployed scan names both of its models.
        assert args.model != DEFAULT_MODEL, "no --model: the image has no artifacts/"
        assert args.detector_model, "no --detector-model: the image has no shared/models"
    return ParsedCommand(args, beam_args)


def unknown_beam_options(beam_args: list[str]) -> set[str]:
    """Flags no Beam ``PipelineOptions`` class defines (Beam itself only logs and drops them)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers: list[Any] = []  # Beam's own parser of every option, handed out by this hook
    PipelineOptions(beam_args).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(beam_args)
    return {a.split("=", 1)[0] for a in unknown if a.startswith("-")}


# ---------------------------------------------------------------- every file parses
@pytest.mark.parametrize("path", deploy_files("*.yaml", "*.yml"), ids=rel)
def test_yaml_manifest_parses_into_named_objects(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{rel(path)} holds no document"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), rel(path)
        assert doc["metadata"].get("name"), f"{rel(path)}: {doc['kind']} without a name"


@pytest.mark.parametrize("path", deploy_files("*.json"), ids=rel)
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


@pytest.mark.parametrize("path", deploy_files("*.sh"), ids=rel)
def test_shell_script_has_valid_syntax(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- dfscan commands
@pytest.mark.parametrize(
    "path",
    [RAYJOB, CRONJOB, LAUNCH, DEPLOY / "README.md", DEPLOY / "beam" / "README.md"],
    ids=rel,
)
def test_commands_are_found_where_a_scan_is_deployed(path: Path) -> None:
    assert [cmd for p, cmd in COMMANDS if p == path], f"no dfscan command found in {rel(path)}"


@pytest.mark.parametrize(
    "path, argv", COMMANDS, ids=[f"{rel(p)}:{i}" for i, (p, _) in enumerate(COMMANDS)]
)
def test_command_parses_with_the_real_cli(
    path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    parsed = parse_dfscan(argv, capsys)
    assert parsed.args.command in {"scan", "results", "train"}


BEAM_COMMANDS = [(p, c) for p, c in COMMANDS if "--" in c]


@pytest.mark.parametrize(
    "path, argv", BEAM_COMMANDS, ids=[f"{rel(p)}:{i}" for i, (p, _) in enumerate(BEAM_COMMANDS)]
)
def test_beam_options_after_double_dash_are_known_to_beam(path: Path, argv: list[str]) -> None:
    beam_args = argv[argv.index("--") + 1 :]
    assert any(a.startswith("--runner=") for a in beam_args)
    assert unknown_beam_options(beam_args) == set()


def test_checker_rejects_a_renamed_flag(capsys: pytest.CaptureFixture[str]) -> None:
    good = ["scan", "s3://u/", "--out", "s3://s/", "--model", "s3://m.pt", "--detector-model",
            "s3://d.onnx", "--runner", "ray", "--ray-address", "auto"]  # fmt: skip
    assert parse_dfscan(good).args.ray_address == "auto"
    renamed = [w.replace("--ray-address", "--ray-adress") for w in good]
    with pytest.raises(pytest.fail.Exception, match="ray-adress"):
        parse_dfscan(renamed, capsys)
    with pytest.raises(AssertionError, match="without --runner ray"):
        parse_dfscan(["local" if w == "ray" else w for w in good])
    bad = ["--runner=FlinkRunner", "--flink_mastr=h:8081", "--flink-master=h:8081"]
    assert unknown_beam_options(bad) == {"--flink_mastr", "--flink-master"}


# ---------------------------------------------------------------- Kubernetes objects
def rayjob() -> dict[str, Any]:
    (doc,) = load_yaml(RAYJOB)
    return doc


def cronjob() -> dict[str, Any]:
    (doc,) = load_yaml(CRONJOB)
    return doc


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the manifests create, named for messages."""
    specs = [("cronjob", cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"])]
    job = rayjob()["spec"]
    cluster = job["rayClusterSpec"]
    specs.append(("rayjob/head", cluster["headGroupSpec"]["template"]["spec"]))
    specs += [
        (f"rayjob/{g['groupName']}", g["template"]["spec"]) for g in cluster["workerGroupSpecs"]
    ]
    specs.append(("rayjob/submitter", job["submitterPodTemplate"]["spec"]))
    return specs


def is_builtin(api_version: str) -> bool:
    """Core (``v1``), unqualified (``batch/v1``) and ``*.k8s.io`` groups; not CRDs."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def core_objects() -> list[tuple[str, dict[str, Any]]]:
    """Built-in Kubernetes objects: the manifests' own, and the RayJob's pod templates."""
    objects = [
        (f"{rel(p)}:{d['kind']}", d)
        for p in deploy_files("*.yaml", "*.yml")
        for d in load_yaml(p)
        if is_builtin(d["apiVersion"])
    ]
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
    templates["submitter"] = job["spec"]["submitterPodTemplate"]
    for name, template in templates.items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{job['metadata']['name']}-{name}"},
            "template": template,
        }
        objects.append((f"rayjob:{name}", pod_template))
    return objects


@pytest.mark.parametrize("name, obj", core_objects(), ids=[n for n, _ in core_objects()])
def test_kubernetes_object_validates_against_its_schema(name: str, obj: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    assert kv.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_rejects_a_misspelled_field() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    doc = cronjob()
    doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoots"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)
    doc = cronjob()
    doc["spec"]["jobTemplate"]["spec"]["backofLimit"] = 2
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name, spec", pod_specs(), ids=[n for n, _ in pod_specs()])
def test_pod_runs_non_root_with_pinned_image_and_resources(name: str, spec: dict[str, Any]) -> None:
    pod_non_root = spec.get("securityContext", {}).get("runAsNonRoot") is True
    assert spec.get("securityContext", {}).get("runAsUser", 10001) != 0
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        assert pod_non_root or sc.get("runAsNonRoot") is True, f"{name}/{c['name']} may run as root"
        assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
        image = c["image"]
        assert re.fullmatch(r"[^:@\s]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image.split("/", 1)[-1])
        assert not image.endswith(":latest"), f"{name}: {image} is not a pinned tag"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c.get("resources", {}).get(kind, {}).keys(), (
                f"{name}/{c['name']} has no cpu/memory {kind}"
            )


def test_secret_references_name_keys_of_the_example_secret() -> None:
    (secret,) = load_yaml(SECRET)
    keys = secret["stringData"].keys()
    refs = 0
    for _, spec in pod_specs():
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                assert source["secretRef"]["name"] == secret["metadata"]["name"]
                refs += 1
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
                    refs += 1
    assert refs >= 4  # the CronJob, the head and both worker groups
    assert {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys


def test_secret_example_holds_placeholders_only() -> None:
    (secret,) = load_yaml(SECRET)
    assert "data" not in secret  # base64 would hide what is committed
    for key, value in secret["stringData"].items():
        if re.search(r"KEY|SECRET|PASSWORD|TOKEN", key):
            assert "example" in value, f"{key} looks like a real credential"


# ---------------------------------------------------------------- the RayJob
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object", "required": ["spec"]}
_COUNT = {"type": "integer", "minimum": 0}
# The part of KubeRay's ray.io/v1 RayJob CRD (ray-operator/apis/ray/v1) these manifests
# use: unknown keys are refused, so a misspelled field fails here, not in the operator.
KUBERAY_RAYJOB = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": _COUNT,
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": _COUNT,
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "submitterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"backoffLimit": _COUNT},
                },
                "submitterPodTemplate": _TEMPLATE,
                "rayClusterSpec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "upscalingMode": {
                                    "enum": ["Default", "Aggressive", "Conservative"]
                                },
                                "idleTimeoutSeconds": _COUNT,
                                "resources": {"type": "object"},
                                "securityContext": {"type": "object"},
                                "env": {"type": "array"},
                                "envFrom": {"type": "array"},
                            },
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["rayStartParams", "template"],
                            "properties": {
                                "serviceType": {"type": "string"},
                                "rayStartParams": _START_PARAMS,
                                "template": _TEMPLATE,
                            },
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": [
                                    "groupName",
                                    "minReplicas",
                                    "maxReplicas",
                                    "rayStartParams",
                                    "template",
                                ],
                                "properties": {
                                    "groupName": {"pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                    "replicas": _COUNT,
                                    "minReplicas": _COUNT,
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                    "rayStartParams": _START_PARAMS,
                                    "template": _TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_rayjob_matches_kuberay_v1_fields() -> None:
    jsonschema.validate(rayjob(), KUBERAY_RAYJOB)
    typo = rayjob()
    typo["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, KUBERAY_RAYJOB)


def test_rayjob_runs_a_ray_scan_and_cleans_up() -> None:
    spec = rayjob()["spec"]
    (argv,) = dfscan_commands_in_shell(spec["entrypoint"])
    args = parse_dfscan(argv).args
    assert (args.runner, args.ray_address) == ("ray", "auto")
    warehouse = urlsplit(args.warehouse)
    assert warehouse.scheme == "postgresql" and warehouse.password is None  # PGPASSWORD
    # KubeRay pastes the entrypoint into the submitter pod's shell: a $VAR would expand
    # there, where the Secret is not mounted.
    assert "$" not in spec["entrypoint"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 0 and spec["activeDeadlineSeconds"] > 0


def test_rayjob_has_autoscaled_cpu_and_gpu_worker_groups() -> None:
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    gpus = {}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["minReplicas"] < group["maxReplicas"], f"{group['groupName']} cannot scale"
        (container,) = group["template"]["spec"]["containers"]
        gpus[group["groupName"]] = container["resources"]["limits"].get("nvidia.com/gpu", 0)
    assert sorted(gpus.values()) == [0, 1], gpus  # one CPU group, one GPU group, 1 GPU per pod
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if gpus[g["groupName"]])
    # The scan places the scorer on a GPU only if the cluster has one when it starts.
    assert gpu_group["minReplicas"] >= 1
    assert "cuda" in gpu_group["template"]["spec"]["containers"][0]["image"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_ray_version_is_the_installed_ray() -> None:
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == version("ray")


# ---------------------------------------------------------------- the nightly CronJob
def test_cronjob_runs_nightly_at_two_utc_one_at_a_time() -> None:
    spec = cronjob()["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("0 2 * * *", "Etc/UTC")
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and 0 < job["activeDeadlineSeconds"] <= 22 * 3600
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def write_stub(directory: Path, name: str, log: Path) -> None:
    """An executable ``name`` that appends its argv to ``log`` as one JSON line."""
    stub = directory / name
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        f"    f.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n"
    )
    stub.chmod(0o755)


def run_with_stubs(
    tmp_path: Path, argv: list[str], names: list[str], env: dict[str, str] | None = None
) -> list[list[str]]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name in names:
        write_stub(bin_dir, name, log)
    result = subprocess.run(
        argv,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_cronjob_scans_yesterdays_partition(tmp_path: Path) -> None:
    (container,) = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    days = {(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()}
    (call,) = run_with_stubs(tmp_path, [*container["command"], *container["args"]], ["dfscan"])
    days.add((dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat())
    args = parse_dfscan(call[1:]).args
    day = args.out.removeprefix("s3://scans/dt=").rstrip("/")
    assert day in days, args.out
    assert args.run_id == f"nightly-{day}"  # a retried Job resumes the same run
    # The input is the day template; the window the CLI resolves at the scheduled time
    # (02:00 UTC the next day) lists exactly the partition that names the output.
    assert (args.input, args.since, args.until) == ("s3://uploads/dt={date}/", "yesterday", "today")
    run_at = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) + dt.timedelta(hours=26)
    window = window_from_args(args, now=run_at)
    assert expand_date_template(args.input, window) == [f"s3://uploads/dt={day}/"]
    assert args.pushgateway == "http://pushgateway.monitoring:9091"


# ---------------------------------------------------------------- Dockerfiles
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]


def dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile, continuation lines joined."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0], []))
        elif stages:
            stages[-1].instructions.append((instr, rest))
        elif instr == "ARG":
            key, _, default = rest.partition("=")
            global_args[key] = default
    return global_args, stages


def effective_user(stage: Stage, stages: list[Stage]) -> str:
    users = [rest for instr, rest in stage.instructions if instr == "USER"]
    if users:
        return users[-1]
    parent = next((s for s in stages if s.name == stage.base), None)
    return effective_user(parent, stages) if parent else "root"


def copy_sources(rest: str) -> list[str] | None:
    """Sources of a COPY from the build context; None for COPY --from."""
    words = shlex.split(rest)
    if any(w.startswith("--from=") for w in words):
        return None
    return [w for w in words if not w.startswith("--")][:-1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_dockerfile_images_run_as_non_root(path: Path) -> None:
    _, stages = dockerfile(path)
    runnable = [s for s in stages if any(i == "ENTRYPOINT" for i, _ in s.instructions)]
    assert stages[-1] in runnable
    for stage in runnable:
        user = effective_user(stage, stages).split(":")[0]
        assert user not in {"root", "0"}, f"{rel(path)} stage {stage.name} runs as {user}"
        assert user in {"10001", "dfscan"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_dockerfile_default_target_is_the_dfscan_cli(path: Path) -> None:
    _, stages = dockerfile(path)
    entrypoints = [json.loads(r) for i, r in stages[-1].instructions if i == "ENTRYPOINT"]
    assert entrypoints[-1] == ["dfscan"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_every_pip_install_uses_the_constraints(path: Path) -> None:
    _, stages = dockerfile(path)
    installs = 0
    for stage in stages:
        copied: set[str] = set()
        for instr, rest in stage.instructions:
            if instr == "COPY":
                copied |= {Path(s).name for s in copy_sources(rest) or []}
            if instr != "RUN":
                continue
            for install in re.findall(r"pip install\b(.*?)(?:&&|;|\|\||$)", rest):
                installs += 1
                assert re.search(r"(^|\s)(-c\s+|--constraint[=\s])\S*constraints\.txt", install), (
                    f"{rel(path)}: pip install{install} ignores constraints.txt"
                )
                assert "constraints.txt" in copied, f"{rel(path)}: constraints.txt not copied yet"
    assert installs >= 1


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_dockerfile_bakes_in_no_model(path: Path) -> None:
    _, stages = dockerfile(path)
    sources = [
        src
        for stage in stages
        for instr, rest in stage.instructions
        if instr in {"COPY", "ADD"}
        for src in copy_sources(rest) or []
    ]
    assert sources
    for src in sources:
        assert not re.search(r"(^|/)(artifacts|models?)(/|$)|\.(pt|pth|onnx|ckpt)$", src), src


@pytest.mark.parametrize("path", DOCKERFILES, ids=rel)
def test_dockerfile_copies_only_what_its_dockerignore_sends(path: Path) -> None:
    ignore = path.with_name(path.name + ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allowlist: everything else stays out of the build context
    assert {"**/*.pt", "**/*.onnx"} <= set(ignore)  # no stray weights inside a package
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    _, stages = dockerfile(path)
    for stage in stages:
        for instr, rest in stage.instructions:
            for src in (copy_sources(rest) or []) if instr == "COPY" else []:
                assert any(src == a or src.startswith(a + "/") for a in allowed), src
                if src != "constraints.txt":  # the lead's lock file, created next to setup.py
                    assert (ROOT / src).exists(), f"{rel(path)} copies missing {src}"


def test_cpu_and_cuda_images_share_one_python_and_beam() -> None:
    args = {path.name: dockerfile(path)[0] for path in DOCKERFILES}
    assert set(args) == {"Dockerfile.cpu", "Dockerfile.cuda"}
    cpu, cuda = args["Dockerfile.cpu"], args["Dockerfile.cuda"]
    assert cpu["PYTHON_IMAGE"] == cuda["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", cpu["PYTHON_IMAGE"])
    assert cuda["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in cuda["CUDA_IMAGE"]
    assert cpu["BEAM_VERSION"] == cuda["BEAM_VERSION"] == version("apache-beam")


# ---------------------------------------------------------------- Beam and Dataflow
def flex_main() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flex_main", FLEX_MAIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flex_parameters() -> list[dict[str, Any]]:
    return json.loads(FLEX_METADATA.read_text())["parameters"]


def scan_flags() -> set[str]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag for action in sub.choices["scan"]._actions for flag in action.option_strings}


def test_flex_template_parameters_are_scan_flags() -> None:
    meta = json.loads(FLEX_METADATA.read_text())
    assert meta["name"] and meta["description"]
    names = [p["name"] for p in flex_parameters()]
    assert names[0] == "input"  # `dfscan scan INPUT`
    for name in names[1:]:
        assert f"--{name.replace('_', '-')}" in scan_flags(), f"no dfscan scan flag for {name}"
    required = {p["name"] for p in flex_parameters() if not p.get("isOptional")}
    assert {"input", "out", "warehouse", "model", "detector_model"} <= required


@pytest.mark.parametrize("param", flex_parameters(), ids=lambda p: p["name"])
def test_flex_parameter_regex_accepts_its_own_example(param: dict[str, Any]) -> None:
    example = param["helpText"].rsplit("Example: ", 1)[1]
    assert param["regexes"]
    for regex in param["regexes"]:
        assert re.fullmatch(regex, example), (regex, example)
        assert not re.fullmatch(regex, example + "\nrm -rf /")


def test_flex_main_turns_launcher_arguments_into_a_beam_scan() -> None:
    launcher_argv = [
        "--input=gs://my-bucket/uploads/dt=2025-06-01/",
        "--out=gs://my-bucket/scans/dt=2025-06-01/",
        "--warehouse=bigquery://my-project/dfscan.video_scans",
        "--model=gs://my-bucket/models/dfscan/resnet18-v1.pt",
        "--detector_model=gs://my-bucket/models/detectors/scrfd/det_500m.onnx",
        "--project=my-project",
        "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp",
    ]
    argv = flex_main().to_scan_argv(launcher_argv)
    parsed = parse_dfscan(argv)
    assert parsed.args.runner == "beam"
    assert parsed.args.detector_model == "gs://my-bucket/models/detectors/scrfd/det_500m.onnx"
    assert parsed.beam_args == [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp",
    ]
    assert unknown_beam_options(parsed.beam_args) == set()


LAUNCH_ENV = {"PROJECT": "my-project", "BUCKET": "my-bucket", "REGION": "us-central1"}


def test_launch_script_builds_the_beam_sdk_image_and_the_template(tmp_path: Path) -> None:
    calls = run_with_stubs(
        tmp_path, ["bash", str(LAUNCH), "build"], ["docker", "gcloud", "dfscan"], LAUNCH_ENV
    )
    build = next(c for c in calls if c[:2] == ["docker", "build"])
    dockerfile_path = ROOT / build[build.index("-f") + 1]
    target = build[build.index("--target") + 1]
    assert target in [s.name for s in dockerfile(dockerfile_path)[1]]
    template = next(c for c in calls if c[:4] == ["gcloud", "dataflow", "flex-template", "build"])
    assert (ROOT / template[template.index("--metadata-file") + 1]) == FLEX_METADATA
    assert template[template.index("--image") + 1] == build[build.index("-t") + 1]


def test_launch_script_runs_the_template_with_valid_parameters(tmp_path: Path) -> None:
    calls = run_with_stubs(
        tmp_path, ["bash", str(LAUNCH), "run", "2025-06-01"], ["gcloud"], LAUNCH_ENV
    )
    (call,) = calls
    assert call[:4] == ["gcloud", "dataflow", "flex-template", "run"]
    values = dict(
        call[i + 1].split("=", 1) for i, word in enumerate(call) if word == "--parameters"
    )
    for param in flex_parameters():
        if not param.get("isOptional"):
            assert param["name"] in values, f"the run passes no {param['name']}"
        if param["name"] in values:
            assert all(re.fullmatch(r, values[param["name"]]) for r in param["regexes"])
    template_args = [f"--{k}={v}" for k, v in values.items()]
    parsed = parse_dfscan(flex_main().to_scan_argv(template_args))
    assert parsed.args.input == "gs://my-bucket/uploads/dt=2025-06-01/"
    assert unknown_beam_options(parsed.beam_args) == set()


def test_launch_script_direct_submits_a_parsable_dataflow_scan(tmp_path: Path) -> None:
    calls = run_with_stubs(
        tmp_path, ["bash", str(LAUNCH), "direct", "2025-06-01"], ["dfscan"], LAUNCH_ENV
    )
    (call,) = calls
    parsed = parse_dfscan(call[1:])
    assert parsed.args.runner == "beam"
    assert parsed.args.warehouse == "bigquery://my-project/dfscan.video_scans"
    assert "--runner=DataflowRunner" in parsed.beam_args
    assert "--setup_file=./setup.py" in parsed.beam_args  # the script runs from the repo root
    assert unknown_beam_options(parsed.beam_args) == set()
