"""Kubernetes manifests (deploy/kubernetes): valid against the Kubernetes OpenAPI schemas, and
consistent with the server they run.

Validation is offline: kubernetes-validate ships the JSON schemas of each Kubernetes release.
The overlays are rendered with kustomize as built into kubectl (`kubectl kustomize`), exactly
what `kubectl apply -k` applies; plain manifests are validated as they are.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from procs import ROOT
from reranker_serve.config import ENV_PREFIX, Settings
from reranker_serve.observability import Metrics

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
PLAIN = ("jobs/download-model.yaml", "prometheus-adapter/rules.yaml")
# The oldest release still in common use and the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Variables a container may set that are not RERANKER_ settings (library and OS knobs).
OTHER_ENV = {"HF_HOME", "HF_TOKEN", "HOME"}
KUBECTL = shutil.which("kubectl")


def render(overlay: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: overlays cannot be rendered")
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def plain(path: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / path).read_text()) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def container(docs_or_workload: list[dict] | dict) -> dict:
    workload = docs_or_workload if isinstance(docs_or_workload, dict) else by_kind(docs_or_workload, "Deployment")
    (main,) = workload["spec"]["template"]["spec"]["containers"]
    return main


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("source", [f"overlays/{o}" for o in OVERLAYS] + list(PLAIN))
def test_manifests_match_the_kubernetes_schemas(source: str, version: str):
    docs = render(source.split("/")[1]) if source.startswith("overlays/") else plain(source)
    assert docs
    for doc in docs:
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misspelt_field():
    deployment = by_kind(render("cpu"), "Deployment")
    container(deployment)["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_fits_the_server(overlay: str):
    docs = render(overlay)
    settings = by_kind(docs, "ConfigMap")["data"]
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= {
        d["kind"] for d in docs}

    # Every setting is a real RERANKER_ variable with a valid value (the folder is on the volume).
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    env_names = set(settings) | {e["name"] for e in main.get("env", [])}
    assert {n for n in env_names if n not in OTHER_ENV} <= names, sorted(env_names - names - OTHER_ENV)
    values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in settings.items() if k != "RERANKER_MODEL_PATH"}
    parsed = Settings(_env_file=None, **values)
    assert settings["RERANKER_MODEL_PATH"].startswith("/models/")
    assert parsed.host == "0.0.0.0" and parsed.use_offline_mode
    assert any(e["name"] == "RERANKER_API_KEY" and e["valueFrom"]["secretKeyRef"] for e in main["env"])

    # Probes: readiness and start-up on /ready (model warmed up), liveness on /health.
    port = main["ports"][0]
    assert port["containerPort"] == parsed.port
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # minutes for a cold model load
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert main[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])

    # Shutdown: the kubelet waits for the preStop pause and the whole drain before SIGKILL.
    pause = int(main["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + parsed.shutdown_timeout
    # Rollouts never drop below the ready replicas there were.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Non-root, and the model on a read-only volume.
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["models"]["readOnly"] and volumes["models"]["persistentVolumeClaim"]["claimName"] == by_kind(
        docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert "ReadWriteMany" in by_kind(docs, "PersistentVolumeClaim")["spec"]["accessModes"]

    # Service, PDB and HPA point at these pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    assert service["spec"].get("sessionAffinity", "None") == "None"
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= by_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"] + 1


def test_cpu_and_gpu_variants():
    cpu, gpu = render("cpu"), render("gpu")
    cpu_res, gpu_res = container(cpu)["resources"], container(gpu)["resources"]
    assert "nvidia.com/gpu" not in cpu_res["limits"] and cpu_res["requests"]["cpu"] == cpu_res["limits"]["cpu"]
    assert gpu_res["limits"]["nvidia.com/gpu"] == "1"
    assert container(cpu)["image"].endswith(":cpu") and container(gpu)["image"].endswith(":cuda")
    assert by_kind(cpu, "ConfigMap")["data"]["RERANKER_DEVICE"] == "cpu"
    assert by_kind(gpu, "ConfigMap")["data"]["RERANKER_DEVICE"] == "cuda"
    # Threads match the cores granted on CPU.
    assert by_kind(cpu, "ConfigMap")["data"]["RERANKER_NUM_THREADS"] == cpu_res["limits"]["cpu"]
    (cpu_metric,) = by_kind(cpu, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu_metric["type"] == "Resource" and cpu_metric["resource"]["name"] == "cpu"


def test_the_queue_depth_hpa_reads_a_metric_the_server_exports():
    (metric,) = by_kind(render("gpu"), "HorizontalPodAutoscaler")["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = {family.name for family in Metrics().registry.collect()}
    assert name in exported
    # prometheus-adapter serves exactly that name, per pod, from the scraped series.
    (rule,) = yaml.safe_load(plain("prometheus-adapter/rules.yaml")[0]["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(name + "{") and rule["name"]["as"] == name
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    annotations = by_kind(render("gpu"), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    # Scraped on RERANKER_METRICS_PORT: /metrics on the API port needs an admin key (issue 21).
    settings = by_kind(render("gpu"), "ConfigMap")["data"]
    assert annotations["prometheus.io/port"] == settings["RERANKER_METRICS_PORT"] != settings["RERANKER_PORT"]


def test_the_download_job_fills_the_volume_the_pods_read():
    job = plain("jobs/download-model.yaml")[0]
    main = container(job)
    command = main["command"]
    assert command[0] == "./download_model.sh" and (ROOT / "download_model.sh").is_file()
    settings = by_kind(render("cpu"), "ConfigMap")["data"]
    assert command[-1] == settings["RERANKER_MODEL_PATH"]
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == "reranker-models"
    assert {e["name"] for e in main["env"]} <= OTHER_ENV
