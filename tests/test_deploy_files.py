"""The deployment files parse, and every documented deployment runs exactly one scheduler (beat) apart
from its workers, with workers that survive a broker restart; `celery worker -B` is refused in production."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def load_all(path: Path) -> list:
    return [doc for doc in YAML(typ="safe").load_all(path.read_text()) if doc is not None]


def celery_role(command: list[str]) -> str | None:
    """'worker' or 'beat' for a `celery -A config <role>` command line, else None."""
    if "celery" not in command[:3] and not (len(command) > 2 and command[1:3] == ["-m", "celery"]):
        return None
    for role in ("worker", "beat"):
        if role in command:
            return role
    return None


def compose_services() -> dict:
    (compose,) = load_all(DEPLOY / "compose.yaml")
    return compose["services"]


def procfile() -> dict[str, list[str]]:
    lines = [line for line in (DEPLOY / "Procfile").read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {name.strip(): shlex.split(command) for name, command in (line.split(":", 1) for line in lines)}


def k8s_documents() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in load_all(path)]


def k8s_containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def worker_commands() -> dict[str, list[str]]:
    """Every worker command line of every deployment file."""
    out = {}
    for name, service in compose_services().items():
        if celery_role(service.get("command") or []) == "worker":
            out[f"compose:{name}"] = service["command"]
    for name, command in procfile().items():
        if celery_role(command) == "worker":
            out[f"Procfile:{name}"] = command
    for doc in k8s_documents():
        for container in k8s_containers(doc):
            if celery_role(container.get("command") or []) == "worker":
                out[f"k8s:{doc['metadata']['name']}"] = container["command"]
    return out


def test_compose_runs_one_beat_apart_from_its_workers():
    services = compose_services()
    beats = [name for name, s in services.items() if celery_role(s.get("command") or []) == "beat"]
    assert beats == ["beat"]
    assert "replicas" not in (services["beat"].get("deploy") or {}) or services["beat"]["deploy"]["replicas"] == 1
    assert {"worker", "web", "migrate", "postgres", "redis"} <= set(services)
    # beat needs the schema (migrations done) and the broker, like the worker
    assert set(services["beat"]["depends_on"]) == {"migrate", "redis"}


def test_procfile_runs_one_beat_apart_from_its_workers():
    processes = procfile()
    assert [name for name, command in processes.items() if celery_role(command) == "beat"] == ["beat"]
    assert "web" in processes and "worker" in processes


def test_kubernetes_manifests_parse_and_run_exactly_one_beat_with_recreate():
    docs = k8s_documents()
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds.count("Deployment") == 3 and "Service" in kinds and "Job" in kinds
    assert "Secret" in kinds and "ConfigMap" in kinds
    beat_replicas = 0
    for doc in docs:
        for container in k8s_containers(doc):
            if celery_role(container.get("command") or []) == "beat":
                assert doc["kind"] == "Deployment"
                assert doc["spec"]["replicas"] == 1
                assert doc["spec"]["strategy"]["type"] == "Recreate"  # a rollout never runs two schedulers
                beat_replicas += doc["spec"]["replicas"]
    assert beat_replicas == 1


def test_kubernetes_service_selects_the_web_pods_and_every_pod_reads_the_config():
    docs = k8s_documents()
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (service,) = by_kind["Service"]
    web = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "teachback-web"][0]
    labels = web["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert web["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for c in k8s_containers(web) for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    secret = by_kind["Secret"][0]["metadata"]["name"]
    config = by_kind["ConfigMap"][0]["metadata"]["name"]
    for doc in by_kind["Deployment"] + by_kind["Job"]:
        for container in k8s_containers(doc):
            sources = {next(iter(v.values()))["name"] for v in container["envFrom"]}
            assert sources == {secret, config}, doc["metadata"]["name"]
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= set(by_kind["Secret"][0]["stringData"])


def test_no_deployment_starts_beat_inside_a_worker_and_all_agree_on_the_worker_command():
    commands = worker_commands()
    assert {key.split(":")[0] for key in commands} == {"compose", "Procfile", "k8s"}
    for where, command in commands.items():
        assert "-B" not in command and "--beat" not in command, where
    assert len({tuple(c) for c in commands.values()}) == 1, commands


def test_the_docs_show_the_same_worker_and_beat_commands():
    text = (ROOT / "docs" / "deploy.md").read_text()
    (worker,) = {tuple(c) for c in worker_commands().values()}
    assert " ".join(worker) in text
    assert "celery -A config beat" in text
    assert "deploy/k8s/" in text


def test_a_production_worker_refuses_an_embedded_beat(tmp_path):
    """`celery worker -B` without WORKER_BEAT_ALLOWED (and without DEBUG or the demo) exits before it takes
    any message, and says why."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORKER_BEAT_ALLOWED", "DJANGO_DEBUG", "TEACHBACK_DEMO")}
    env.update(DJANGO_SECRET_KEY="refuse-beat-test", REDIS_URL="redis://127.0.0.1:1/0",  # never reached
               DATABASE_URL="postgres://postgres@127.0.0.1:5432/unused", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-B", "-s", str(tmp_path / "schedule"),
         "--pool", "threads", "--loglevel", "INFO"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start a worker with an embedded beat" in result.stdout + result.stderr


def test_the_demo_and_an_explicit_setting_may_embed_beat():
    """The setting the refusal reads: off by default, on for the demo, or when set."""
    code = "import django; django.setup(); from django.conf import settings; print(settings.WORKER_BEAT_ALLOWED)"
    env = {k: v for k, v in os.environ.items() if k not in ("WORKER_BEAT_ALLOWED", "DJANGO_DEBUG", "TEACHBACK_DEMO")}
    env.update(DJANGO_SECRET_KEY="x", DJANGO_SETTINGS_MODULE="config.settings")

    def allowed(**extra) -> str:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **extra},
                              capture_output=True, text=True, timeout=60).stdout.strip()

    assert allowed() == "False"
    assert allowed(TEACHBACK_DEMO="1") == "True"
    assert allowed(WORKER_BEAT_ALLOWED="1") == "True"
