"""The service files as far as this machine can check them: no Docker engine or cluster runs here, so the
compose file and the Kubernetes manifests are checked structurally (they parse, what they reference exists,
their embedded reflexd configurations load, ports and probe paths agree with them and with the ops server),
the systemd unit with `systemd-analyze verify`, and the probe paths against a live daemon's ops server."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from daemon.config import AppConfig, load_config_text
from daemon.registry import builtin_registry
from tests.conftest import StartDaemon
from tests.kafka_broker import free_port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "reflexd@.service"
DEFAULT_SHUTDOWN_BUDGET = 20.0


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_reflexd_config() -> AppConfig:
    """The reflexd configuration compose hands the container (`$${VAR}` is what compose turns into `${VAR}`)."""
    text = compose()["configs"]["reflexd_config"]["content"].replace("$${", "${")
    env = {"KAFKA_BOOTSTRAP_SERVERS": "kafka:19092", "REFLEXD_LOG_FORMAT": "json"}
    config = load_config_text(text, builtin_registry(), env=env, base_dir=ROOT)
    return config


def k8s() -> dict[str, dict[str, Any]]:
    """Every manifest of the kustomization, by kind."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in out, f"two {doc['kind']}s"
            out[doc["kind"]] = doc
    return out


def k8s_reflexd_config(manifests: dict[str, dict[str, Any]]) -> AppConfig:
    """The ConfigMap's configuration with the Secret's values as its environment (as the pod sees them)."""
    secret = manifests["Secret"]["stringData"]
    return load_config_text(manifests["ConfigMap"]["data"]["config.yaml"], builtin_registry(), env=secret)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# -- docker compose ---------------------------------------------------------------------------------------------


def test_compose_services_reference_files_that_exist_and_agree_on_ports() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"kafka", "reflexd", "prometheus", "grafana"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in doc["volumes"], f"{name} uses an undeclared volume {source}"
        for config in service.get("configs", []):
            assert config["source"] in doc["configs"], f"{name} uses an undeclared config {config['source']}"
        for dependency in service.get("depends_on", []):
            assert dependency in services
    config = compose_reflexd_config()
    assert config.daemon.http is not None
    port = port_of(config.daemon.http.listen)
    reflexd = services["reflexd"]
    assert reflexd["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(reflexd["healthcheck"]["test"])
    assert config.daemon.state_path.startswith("/var/lib/reflexd/")
    assert "reflexd-state:/var/lib/reflexd" in reflexd["volumes"]
    grace = float(reflexd["stop_grace_period"].rstrip("s"))
    assert grace > config.daemon.shutdown_timeout_seconds

    # Prometheus scrapes reflexd by its service name: the ops server must accept that Host
    prometheus = yaml.safe_load(doc["configs"]["prometheus_config"]["content"])
    (target,) = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    host, target_port = target.rsplit(":", 1)
    assert host == "reflexd" and int(target_port) == port
    assert host in config.daemon.http.allowed_hosts
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    assert mounts["./deploy/prometheus/rules.yml"] in prometheus["rule_files"]

    # Grafana: the data source the provisioning names is Prometheus's service, the dashboard is where the
    # provider reads and where the home dashboard points
    datasource = yaml.safe_load(doc["configs"]["grafana_datasource"]["content"])["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(doc["configs"]["grafana_dashboards"]["content"])["providers"][0]
    grafana = services["grafana"]
    mounted = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    dashboard = mounted["./deploy/grafana/reflexd.json"]
    assert Path(dashboard).parent == Path(provider["options"]["path"])
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard


def test_the_compose_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/prometheus.sh")
    config = yaml.safe_load(compose()["configs"]["prometheus_config"]["content"])
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "rules.yml")]  # where compose mounts it
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Dockerfile -------------------------------------------------------------------------------------------------


def test_the_image_keeps_its_state_in_a_volume() -> None:
    """The image's state directory is a VOLUME, and the shipped configuration's state file lands in it."""
    text = (ROOT / "Dockerfile").read_text()
    volumes = re.findall(r"^VOLUME\s+(.+)$", text, re.M)
    assert volumes and "/var/lib/reflexd" in volumes[-1]
    assert re.search(r"^RUN ln -s /var/lib/reflexd /app/var$", text, re.M)
    config = load_config_text((ROOT / "config.yaml").read_text(), builtin_registry(), base_dir=ROOT)
    assert config.daemon.state_path.startswith("./var/")  # /app/config.yaml → /app/var/... → the volume
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd is not None and "/app/config.yaml" in cmd.group(1)
    assert re.search(r"^USER reflexd$", text, re.M) and "--uid 10001" in text


# -- Kubernetes ---------------------------------------------------------------------------------------------------


def test_kubernetes_manifests_reference_each_other_and_the_configuration() -> None:
    manifests = k8s()
    assert set(manifests) == {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service"}
    config = k8s_reflexd_config(manifests)  # loads: every ${VAR} it needs is in the Secret
    assert config.daemon.http is not None and config.daemon.http.listen.startswith("0.0.0.0:")
    port = port_of(config.daemon.http.listen)

    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"ops": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert pod["terminationGracePeriodSeconds"] > config.daemon.shutdown_timeout_seconds

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    assert volumes["config"]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert container["args"] == ["run", "-c", f"{mounts['config']}/config.yaml"]
    assert (
        volumes["state"]["persistentVolumeClaim"]["claimName"]
        == manifests["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert config.daemon.state_path.startswith(mounts["state"] + "/")
    assert container["envFrom"] == [{"secretRef": {"name": manifests["Secret"]["metadata"]["name"]}}]
    # one writer of a ReadWriteOnce volume: no second pod during an update
    spec = manifests["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= manifests["Service"]["spec"]["selector"].items()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and "tmp" in mounts
    (service_port,) = manifests["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "ops"
    assert "emptyDir" in (K8S / "pvc.yaml").read_text()  # the trade-off is stated


async def test_the_probe_paths_are_the_ops_servers_endpoints(tmp_path: Path, run_daemon: StartDaemon) -> None:
    """The ConfigMap's configuration, on a free port and a temporary state path, served by a real daemon: the
    liveness path answers 200 and the readiness path is the readiness endpoint (200 or 503 with the sources),
    never a 404."""
    manifests = k8s()
    text = manifests["ConfigMap"]["data"]["config.yaml"]
    text = text.replace('listen: "0.0.0.0:9108"', 'listen: "127.0.0.1:0"')
    text = text.replace("state_path: /var/lib/reflexd/reflexd.db", f"state_path: {tmp_path / 'state.db'}")
    # the feed: a local port nothing listens on (a test never reaches the exchange)
    text, n = re.subn(r"url: wss://\S+", f"url: ws://127.0.0.1:{free_port()}/ws", text)
    assert n == 1
    env = dict(manifests["Secret"]["stringData"])
    config = load_config_text(text, builtin_registry(), env=env)
    daemon = await run_daemon(config)
    assert daemon.http is not None
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    async with aiohttp.ClientSession() as http:
        live = container["livenessProbe"]["httpGet"]["path"]
        async with http.get(f"http://127.0.0.1:{daemon.http.port}{live}") as response:
            assert response.status == 200
        ready = container["readinessProbe"]["httpGet"]["path"]
        async with http.get(f"http://127.0.0.1:{daemon.http.port}{ready}") as response:
            assert response.status in (200, 503)
            assert "trades" in (await response.json())["sources"]


# -- systemd ------------------------------------------------------------------------------------------------------


def unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def readme_service_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Running as a service", 1)[1]
    return section.split("```bash", 1)[1].split("```", 1)[0]


def test_the_unit_matches_how_the_readme_installs_reflexd() -> None:
    """ExecStart runs the reflexd the README's steps install, Documentation= names files those steps copy,
    the state is per instance under /var/lib/reflexd, and TimeoutStopSec exceeds the shutdown budget."""
    fields = unit()
    block = readme_service_block()
    (exec_start,) = fields["ExecStart"]
    binary, *args = shlex.split(exec_start)
    venv = binary.removesuffix("/bin/reflexd")
    assert f"python3 -m venv {venv}" in block and f"{venv}/bin/pip install" in block
    prefix = re.search(r"git archive HEAD \| sudo tar -x -C (\S+)", block)  # the tracked files, no .venv
    assert prefix is not None
    for url in fields["Documentation"][0].split():
        path = url.removeprefix("file://")
        assert path.startswith(prefix.group(1) + "/")
        assert (ROOT / path.removeprefix(prefix.group(1) + "/")).is_file(), url
    assert args[:2] == ["run", "-c"]
    assert f"/etc/systemd/system/{UNIT.name}" in block and args[2] in block
    assert fields["StateDirectory"] == ["reflexd/%i"]
    assert fields["WorkingDirectory"] == ["/var/lib/reflexd/%i"]
    env = dict(v.split("=", 1) for v in fields["Environment"])
    assert env["REFLEXD_STATE_PATH"] == "%S/reflexd/%i/reflexd.db"  # %S: /var/lib for a system unit
    assert "${REFLEXD_STATE_PATH:-./var/reflexd.db}" in (ROOT / "README.md").read_text()
    assert float(fields["TimeoutStopSec"][0]) > DEFAULT_SHUTDOWN_BUDGET
    assert fields["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads (daemon.hangup)


def test_the_state_path_the_unit_sets_gives_each_instance_its_own_file() -> None:
    text = (
        'daemon: {state_path: "${REFLEXD_STATE_PATH:-./var/reflexd.db}", http: null}\n'
        f"sources: {{s: {{type: replay, path: {ROOT / 'data' / 'sample-trades.jsonl'}}}}}\n"
    )
    paths = {
        load_config_text(
            text, builtin_registry(), env={"REFLEXD_STATE_PATH": f"/var/lib/reflexd/{i}/reflexd.db"}
        ).daemon.state_path
        for i in ("1", "2")
    }
    assert paths == {"/var/lib/reflexd/1/reflexd.db", "/var/lib/reflexd/2/reflexd.db"}


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` on an instance of the template. It insists the ExecStart program exists, and
    /opt/reflexd is not installed here: the program is swapped for this tree's reflexd (the README test above
    checks the real path)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    reflexd = Path(sys.executable).parent / "reflexd"
    assert reflexd.exists()
    text = UNIT.read_text().replace("/opt/reflexd/.venv/bin/reflexd", str(reflexd))
    instance = tmp_path / "reflexd@main.service"
    instance.write_text(text)
    result = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reflexd@main.service" not in result.stderr, result.stderr  # no warning about the unit itself
