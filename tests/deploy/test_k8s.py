"""deploy/k8s: every overlay renders, every object is valid against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields are errors), and the manifests agree with the
app they deploy: probe paths and port, the metrics the autoscalers name, the shutdown
timeout, the image's user, labels and selectors. No cluster is needed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.routes import health, metrics
from app.config import Settings
from app.main import create_app
from tests.deploy.kustomize import kubectl_render, render
from tests.deploy.support import ROOT, compose, compose_value

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
# An older Kubernetes, which the manifests keep working on, and the newest the validator knows.
VERSIONS = ["1.32.0", kubernetes_validate.utils.latest_version()]
# Kinds without a built-in schema (custom resources): checked field by field below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
ADAPTER = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())


def paths(router: object) -> dict[object, str]:
    return {route.endpoint: route.path for route in router.routes}  # type: ignore[attr-defined]


HEALTHZ = paths(health.router)[health.healthz]
READYZ = paths(health.router)[health.readyz]
METRICS = paths(metrics.router)[metrics.metrics]


def rendered(overlay: str) -> list[dict]:
    return render(K8S / "overlays" / overlay)


def job_store(obj: dict) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "job-store"


def one(objects: list[dict], kind: str) -> dict:
    """The replicas' object of this kind (not the job store's, in the jobs overlay)."""
    [obj] = [o for o in objects if o["kind"] == kind and not job_store(o)]
    return obj


def container(objects: list[dict]) -> dict:
    [c] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def settings_of(objects: list[dict]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


def dockerfile_env(name: str) -> str:
    return re.findall(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text())[-1]


@pytest.fixture(scope="module")
def exported(tiny_models: Path) -> dict[str, str]:
    """{metric family: type} that a real app serves on its metrics route."""
    settings = Settings(model_dir=tiny_models, device="cpu", torch_threads=1)
    with TestClient(create_app(settings)) as client:
        response = client.get(METRICS)
    assert response.status_code == 200
    return {family.name: family.type for family in text_string_to_metric_families(response.text)}


def test_overlays_are_the_four_documented() -> None:
    assert OVERLAYS == ["cpu", "gpu", "ingress", "jobs", "keda"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_test_renderer_renders_what_kubectl_kustomize_renders(overlay: str) -> None:
    def by_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objects}

    assert by_name(rendered(overlay)) == by_name(kubectl_render(K8S / "overlays" / overlay))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_strictly(overlay: str, version: str) -> None:
    unchecked = set()
    for obj in rendered(overlay):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add((obj["apiVersion"], obj["kind"]))
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} at {list(e.path)}: {e.message}")
    assert unchecked <= CUSTOM_KINDS


def test_the_validator_is_strict() -> None:
    """A misspelt field fails, so the test above would catch one in the manifests."""
    deployment = one(rendered("cpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = READYZ
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_apps_routes_and_port(overlay: str) -> None:
    objects = rendered(overlay)
    c = container(objects)
    [port] = c["ports"]
    # The image sets VAE_PORT; the ConfigMap may override it.
    assert port["containerPort"] == int(settings_of(objects).get("VAE_PORT", dockerfile_env("VAE_PORT")))
    for probe, path in (("startupProbe", HEALTHZ), ("livenessProbe", HEALTHZ), ("readinessProbe", READYZ)):
        assert c[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == METRICS
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    service = one(objects, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_apps(overlay: str) -> None:
    objects = rendered(overlay)
    fields = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    assert set(settings_of(objects)) <= fields
    assert all(isinstance(value, str) for value in settings_of(objects).values())
    [secret] = [e for e in container(objects)["env"] if "valueFrom" in e]
    assert secret["name"] == "VAE_API_KEYS" and secret["valueFrom"]["secretKeyRef"]["key"] == "VAE_API_KEYS"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_shutdown_timeout(overlay: str) -> None:
    objects = rendered(overlay)
    default = Settings.model_fields["shutdown_timeout"].default
    timeout = int(settings_of(objects).get("VAE_SHUTDOWN_TIMEOUT", default))
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    grace = one(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > max(timeout, default) + pre_stop


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_non_root_user_and_locked_down(overlay: str) -> None:
    objects = rendered(overlay)
    user, group = re.search(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M).groups()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(user), int(group))
    assert int(user) != 0 and pod["automountServiceAccountToken"] is False
    security = container(objects)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The read-only root needs a writable /tmp, as compose's tmpfs gives.
    assert [m["mountPath"] for m in container(objects)["volumeMounts"]] == ["/tmp"]
    resources = container(objects)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labels_and_selectors_agree(overlay: str) -> None:
    objects = rendered(overlay)
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects_pods(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= pod_labels.items()

    assert selects_pods(deployment["spec"]["selector"]["matchLabels"])
    assert selects_pods(one(objects, "Service")["spec"]["selector"])
    assert selects_pods(one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert selects_pods(spread["labelSelector"]["matchLabels"])
    scalers = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(scalers) == 1
    target = scalers[0]["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    # The autoscaler owns the replica count: a re-apply must not reset it.
    assert "replicas" not in deployment["spec"]
    config = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    assert config == one(objects, "ConfigMap")["metadata"]["name"]


def hpa_targets(hpa: dict) -> dict[str, str]:
    """{custom metric name: per-pod average target}, and "cpu": utilisation percent."""
    targets = {}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            targets[metric["pods"]["metric"]["name"]] = str(metric["pods"]["target"]["averageValue"])
        else:
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
            targets["cpu"] = str(metric["resource"]["target"]["averageUtilization"])
    return targets


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "ingress", "jobs"])
def test_hpa_scales_on_gauges_the_app_exports_through_the_adapter(overlay: str, exported: dict[str, str]) -> None:
    targets = hpa_targets(one(rendered(overlay), "HorizontalPodAutoscaler"))
    custom = set(targets) - {"cpu"}
    assert custom == {"vae_http_requests_in_flight", "vae_queue_depth"} and "cpu" in targets
    for name in custom:
        assert exported[name] == "gauge", name
    # The Prometheus Adapter serves each under the same name, from the series of that name.
    rules = {rule["name"]["as"]: rule for rule in ADAPTER["rules"]["custom"]}
    assert set(rules) == custom
    for name, rule in rules.items():
        assert rule["seriesQuery"].startswith(name + "{") and re.fullmatch(rule["name"]["matches"], name)
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]


def test_keda_scales_on_the_same_metrics_and_targets_as_the_hpa(exported: dict[str, str]) -> None:
    scaled = one(rendered("keda"), "ScaledObject")
    hpa = one(rendered("cpu"), "HorizontalPodAutoscaler")
    targets = {}
    for trigger in scaled["spec"]["triggers"]:
        if trigger["type"] == "prometheus":
            [name] = re.findall(r"\b(vae_\w+)\{", trigger["metadata"]["query"])
            assert exported[name] == "gauge"
            targets[name] = trigger["metadata"]["threshold"]
        else:
            assert trigger["type"] == "cpu" and trigger["metricType"] == "Utilization"
            targets["cpu"] = trigger["metadata"]["value"]
    assert targets == hpa_targets(hpa)
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]


def test_gpu_overlay_gives_each_pod_one_gpu_and_the_cuda_image() -> None:
    objects = rendered("gpu")
    c = container(objects)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings_of(objects)["VAE_DEVICE"] == "cuda" and c["image"] == "vaeserve:cu128"
    assert container(rendered("cpu"))["image"] == "vaeserve:cpu" and settings_of(rendered("cpu"))["VAE_DEVICE"] == "cpu"


def test_ingress_serves_the_gateways_prefix_without_metrics() -> None:
    objects = rendered("ingress")
    ingress = one(objects, "Ingress")
    prefix = compose_value(compose()["services"]["vae"]["environment"]["VAE_ROOT_PATH"])
    assert settings_of(objects)["VAE_ROOT_PATH"] == prefix
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/x-forwarded-prefix"] == prefix
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = one(objects, "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    # ingress-nginx anchors the regex at the start and rewrites to /$1, as the gateway strips the prefix.
    target = annotations["nginx.ingress.kubernetes.io/rewrite-target"]
    assert re.match(path["path"], prefix + "/v1/decode").expand(target.replace("$", "\\")) == "/v1/decode"
    assert re.match(path["path"], prefix + METRICS) is None
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.removesuffix("m")) << 20 == int(settings_of(objects)["VAE_MAX_UPLOAD_BYTES"])


def test_jobs_overlay_points_the_replicas_at_its_redis_and_only_they_reach_it() -> None:
    objects = rendered("jobs")
    store = settings_of(objects)["VAE_JOB_STORE"]
    redis = [o for o in objects if job_store(o)]
    [service] = [o for o in redis if o["kind"] == "Service"]
    [deployment] = [o for o in redis if o["kind"] == "Deployment"]
    [port] = service["spec"]["ports"]
    assert store == f"redis://{service['metadata']['name']}:{port['port']}/0"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [container_port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert container_port["name"] == port["targetPort"]
    [policy] = [o for o in redis if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    [allowed] = policy["spec"]["ingress"][0]["from"]
    replicas = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert allowed["podSelector"]["matchLabels"].items() <= replicas.items()
    assert not allowed["podSelector"]["matchLabels"].items() <= pod_labels.items()
