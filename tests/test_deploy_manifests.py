"""The deployment files are valid for what reads them: Kubernetes (offline schemas), KubeRay's CRD, `ray up`.

Core objects are checked with `kubernetes-validate` (it ships Kubernetes' schemas: no cluster, no network).
The RayCluster is checked against the openAPIV3Schema of KubeRay's published CRD, read from the shared
folder beside the repository (`../shared/kuberay-crds/`), skipped with a message where it is absent.
`ray_cluster.yaml` is loaded the way `ray up` loads it.
"""

from __future__ import annotations

import copy
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from actors.ray_connection import WORKER_NICENESS

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "deploy" / "kubernetes"


def _shared_folder() -> Path:
    """`../shared` beside the repository: beside this checkout, or beside the main checkout of a worktree."""
    candidates = [REPO.parent / "shared"]
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    if common:
        candidates.append(Path(common).parent.parent / "shared")
    return next((c for c in candidates if c.exists()), candidates[0])


KUBERAY_CRDS = _shared_folder() / "kuberay-crds"
KUBERNETES_VERSION = "1.33"


def documents(name: str) -> list[dict[str, Any]]:
    with (MANIFESTS / name).open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in documents(path.name)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in all_documents() if doc["kind"] == kind]


def gateway_steps(container: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The gateway's `sh -c "ray start ... && exec wa-router serve ..."`, as its two argument lists."""
    command = container["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3
    start, serve = command[2].split("&&")
    return shlex.split(start), shlex.split(serve)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


CORE_KINDS = {"Deployment", "Service", "Secret", "PersistentVolumeClaim"}


@pytest.mark.parametrize("doc", [d for d in all_documents() if d["kind"] in CORE_KINDS],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_objects_validate_against_kubernetes_schemas(doc: dict[str, Any]) -> None:
    # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_every_manifest_is_one_the_tests_know() -> None:
    assert {d["kind"] for d in all_documents()} == CORE_KINDS | {"RayCluster"}


def test_a_misspelt_field_is_refused_by_the_offline_validation() -> None:
    # The check above is only worth something if it can fail.
    deployment = copy.deepcopy(by_kind("Deployment")[0])  # any Deployment
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def raycluster_schema() -> dict[str, Any]:
    crd_path = KUBERAY_CRDS / "ray.io_rayclusters.yaml"
    if not crd_path.exists():
        pytest.skip(f"KubeRay's CRDs are not at {KUBERAY_CRDS} (the shared folder beside the repository)")
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def strict(schema: Any) -> Any:
    """The CRD's schema with `additionalProperties: false` wherever it lists properties: Kubernetes prunes
    unknown fields of a custom resource silently, so a misspelt field would otherwise pass."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validate_raycluster(doc: dict[str, Any]) -> None:
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.validate(body, strict(raycluster_schema()))


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "ray-cluster-gcs-ft.yaml"])
def test_raycluster_validates_against_kuberays_crd(name: str) -> None:
    (doc,) = documents(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    validate_raycluster(doc)


def test_the_crd_check_refuses_a_misspelt_field() -> None:
    (doc,) = documents("ray-cluster.yaml")
    doc["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_raycluster(doc)


def test_raycluster_keeps_routing_actors_off_the_head_and_auth_on() -> None:
    (doc,) = documents("ray-cluster.yaml")
    head = doc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = doc["spec"]["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] >= 1 for g in groups)
    pods = [head["template"]] + [g["template"] for g in groups]
    for group in [head, *groups]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    # The routing actors' resource (gateway.yaml) is advertised by the workers, never by the head.
    (gateway,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "wa-router-gateway"]
    resource = env_of(gateway["spec"]["template"]["spec"]["containers"][0])["WA_ROUTER_RAY_ACTOR_RESOURCE"]["value"]
    assert resource not in head.get("resources", {}) and resource not in head["rayStartParams"].get("resources", "")
    assert all(float(g["resources"][resource]) >= 1 for g in groups)
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "wa-router-ray-token",
                                                                      "key": "auth_token"}
        # The routing actors at the gateway's priority on every node that may host them (Ray's default: 15).
        assert env["RAY_worker_niceness"]["value"] == str(WORKER_NICENESS)
        assert any(p["containerPort"] == 8080 for p in container["ports"])


def test_gcs_fault_tolerant_cluster_differs_only_by_its_redis() -> None:
    (base,) = documents("ray-cluster.yaml")
    (ft,) = documents("ray-cluster-gcs-ft.yaml")
    options = ft["spec"].pop("gcsFaultToleranceOptions")
    assert ft == base
    redis_service = {d["metadata"]["name"] for d in documents("redis.yaml") if d["kind"] == "Service"}
    assert options["redisAddress"] == "redis://wa-router-redis:6379" and "wa-router-redis" in redis_service
    assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "wa-router-redis"


def test_gateway_joins_the_cluster_with_its_secrets_from_a_secret() -> None:
    from config.settings import Settings

    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "wa-router-gateway"]
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    start, serve = gateway_steps(container)
    # The pod is a Ray node of the cluster (a driver: a Ray client cannot carry streaming generators)
    # that takes no CPU and does not advertise the routing actors' resource.
    assert start[:2] == ["ray", "start"] and "--address=wa-router-head-svc:6379" in start
    assert "--num-cpus=0" in start and not any("routing" in arg for arg in start)
    assert serve[:3] == ["exec", "wa-router", "serve"]
    assert serve[serve.index("--ray-address") + 1] == "auto"
    env = env_of(container)
    secrets = {name for d in documents("secret.example.yaml") for name in d["stringData"]}
    for name in ("WA_ROUTER_DATABASE_URL", "WA_ROUTER_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "wa-router" and ref["key"] in secrets
    # Every WA_ROUTER_ variable the manifest sets is a real setting.
    fields = set(Settings.model_fields)
    for name in env:
        if name.startswith("WA_ROUTER_"):
            assert name.removeprefix("WA_ROUTER_").lower() in fields, name
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "wa-router"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_gateway_cli_accepts_what_the_manifest_runs() -> None:
    import typer.main

    from gateway.cli import app

    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "wa-router-gateway"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    _, serve = gateway_steps(container)
    assert serve[:3] == ["exec", "wa-router", "serve"], serve
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    params = command.make_context("serve", list(serve[3:])).params
    assert params["ray_address"] == "auto" and params["host"] == "0.0.0.0" and params["port"] == 8000


def test_ray_cluster_yaml_loads_as_ray_up_loads_it() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert prepared["cluster_name"] == "wa-router"
