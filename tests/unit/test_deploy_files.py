"""systemd/, deploy/docker, deploy/grafana, deploy/otel and deploy/k8s: structure, cross-references
between the files, and every command line accepted by the real CLI. Docker cannot run here, so
these tests check what a broken deployment would get wrong: paths, names, ports and flags."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from metricsd.app import check_exposure, preflight
from metricsd.cli import main
from metricsd.cli import serve as serve_command
from metricsd.config import Config, ConfigError, load_config
from metricsd.security import IngestCurve

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "metricsd.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "metricsd.toml"
DOCKER = ROOT / "deploy" / "docker"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "metricsd.json"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROMTOOL = shutil.which("promtool")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def serve_config(args: list[str], environ: dict[str, str] | None = None) -> Config:
    """The Config that ``metricsd <args>`` would run with (click parses the real options)."""
    assert args[0] == "serve", args
    ctx = serve_command.make_context("serve", list(args[1:]))
    params = ctx.params
    overrides: dict[str, Any] = {}
    mapping = {
        "http": ("http", "listen"),
        "state": ("state", "path"),
        "token": ("auth", "token"),
        "insecure": ("auth", "insecure"),
        "demo": ("demo", "enabled"),
        "tls_cert": ("http", "tls_cert"),
        "tls_key": ("http", "tls_key"),
    }
    for name, (section, key) in mapping.items():
        if params.get(name) is not None:
            overrides.setdefault(section, {})[key] = params[name]
    if params.get("ingest"):
        overrides.setdefault("ingest", {})["endpoints"] = list(params["ingest"])
    return load_config(params.get("config_path"), environ=environ or {}, overrides=overrides)


# --- systemd ----------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_the_notify_watchdog_and_hardening_settings() -> None:
    s = {k: v[-1] for k, v in unit_settings().items()}
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["WatchdogSec"] == "30" and s["Restart"] == "on-failure"
    assert s["DynamicUser"] == "yes" and s["User"] == "metricsd"
    assert s["StateDirectory"] == "metricsd"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"
    assert s["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert unit_settings()["SystemCallFilter"][0] == "@system-service"


def test_unit_command_line_runs_the_example_config_with_the_state_directory() -> None:
    exec_start = unit_settings()["ExecStart"][0].split()
    assert exec_start[0] == "/opt/metricsd/bin/metricsd"  # the venv of the install steps
    assert exec_start[1:] == [
        "serve",
        "--config",
        "/etc/metricsd/metricsd.toml",
        "--state",
        "/var/lib/metricsd/state.bin",
    ]
    args = ["serve", "--config", str(EXAMPLE_CONFIG), *exec_start[4:]]
    config = serve_config(args)
    assert config.state.path == "/var/lib/metricsd/state.bin"  # inside StateDirectory=
    check_exposure(config)  # the example starts without a token: loopback only


def test_unit_documentation_is_a_file_the_package_installs(tmp_path: Path) -> None:
    """Documentation= names a file in the venv the install steps create: the wheel installs the
    docs under <prefix>/share/doc/metricsd/."""
    (documentation,) = unit_settings()["Documentation"]
    prefix = str(Path(unit_settings()["ExecStart"][0].split()[0]).parents[1])
    assert documentation == f"file://{prefix}/share/doc/metricsd/operations.md"
    assert "python3 -m venv /opt/metricsd && /opt/metricsd/bin/pip install ." in UNIT.read_text()
    # A copy of what the build reads (pip builds in the source tree; keep the checkout clean).
    src = tmp_path / "src"
    for name in ("metricsd", "docs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip, "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("metricsd-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    assert f"metricsd-{version}.data/data/share/doc/metricsd/operations.md" in names
    installed = {n.rsplit("/", 1)[1] for n in names if "/share/doc/metricsd/" in n}
    assert installed == {"README.md"} | {p.name for p in (ROOT / "docs").glob("*.md")}


def test_example_config_passes_check_config() -> None:
    result = CliRunner().invoke(main, ["check-config", str(EXAMPLE_CONFIG)], env={})
    assert result.exit_code == 0, result.output
    effective = json.loads(result.output)
    assert effective["http"]["listen"] == "127.0.0.1:9465"
    assert effective["ingest"]["endpoints"] == ["tcp://127.0.0.1:5557"]
    assert [slo["name"] for slo in effective["slo"]] == ["availability", "chat-availability"]
    assert effective["cost"]["budgets"][0]["key"] == "*"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's metricsd.
    executable = shutil.which("metricsd") or str(Path(sys.executable).with_name("metricsd"))
    assert Path(executable).exists()
    unit = tmp_path / "metricsd.service"
    unit.write_text(UNIT.read_text().replace("/opt/metricsd/bin/metricsd", executable))
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in result.stderr.splitlines() if "metricsd" in line]
    assert result.returncode == 0 and complaints == [], result.stderr
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = re.search(r"Overall exposure level for metricsd.service: ([0-9.]+)", result.stdout)
    assert level is not None, result.stdout + result.stderr
    assert float(level.group(1)) <= 2.0  # systemd's scale: 0 (locked down) to 10 (exposed)


# --- Docker -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_tag() -> str:
    """The one image name and tag: metricsd:<package version>."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    return f"metricsd:{version.group(1)}"


def commented_commands(path: Path, marker: str) -> list[list[str]]:
    """The shell commands in a file's comments that contain ``marker`` (continuation lines
    joined), split into words."""
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines()]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [shlex.split(line) for line in text.splitlines() if marker in line]


def test_dockerfile_is_small_non_root_and_runs_metricsd() -> None:
    steps = dockerfile_instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"]
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users == ["10001:10001"]
    assert "gcc" not in " ".join(rest for _, rest in final)  # the compiler stays in the build stage
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    final_map = dict(final)
    assert json.loads(final_map["ENTRYPOINT"]) == ["metricsd"]
    assert final_map["EXPOSE"] == "9465 5557"
    assert "/healthz" in final_map["HEALTHCHECK"]
    assert "install -d -o 10001 -g 10001 -m 0755 /etc/metricsd/keys" in final_map["RUN"]
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[1:4] == ["*", "!pyproject.toml", "!README.md"]
    assert "!metricsd/" in ignore and "!docs/*.md" in ignore  # what the COPY lines need


def test_docker_image_listens_beyond_loopback_with_a_token_and_curve(tmp_path: Path) -> None:
    """Inside a container, loopback is the container itself: the default command binds HTTP and
    ingest on every interface, and so starts only with a token and a CURVE key (or --insecure),
    as the commands in the Dockerfile's header give it."""
    cmd = json.loads(dict(dockerfile_instructions())["CMD"])
    config = serve_config(cmd)
    assert config.http.listen == "0.0.0.0:9465" and not config.auth.insecure
    assert config.ingest.endpoints == ("tcp://0.0.0.0:5557",)
    assert config.state.path == "/var/lib/metricsd/state.bin"
    with pytest.raises(ConfigError, match="no token is set"):
        preflight(config)
    with pytest.raises(ConfigError, match="without CURVE"):
        preflight(serve_config(cmd, environ={"METRICSD_TOKEN": "t"}))
    keygen_run, serve_run = commented_commands(DOCKER / "Dockerfile", "docker run")
    mounts = {
        run[i + 1].split(":")[1]
        for run in (keygen_run, serve_run)
        for i, w in enumerate(run)
        if w == "-v"
    }
    assert mounts == {"/etc/metricsd/keys", "/var/lib/metricsd"}
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen = keygen_run[keygen_run.index(image_tag()) + 1 :]
    keygen = [w.replace("/etc/metricsd/keys", str(keys)) for w in keygen]
    result = CliRunner().invoke(main, keygen, env={})
    assert result.exit_code == 0, result.output
    assert (keys / "curve.pub").read_text() == result.output
    assert serve_run[-1] == image_tag()  # the image's own command
    env = dict(serve_run[i + 1].split("=", 1) for i, w in enumerate(serve_run[:-1]) if w == "-e")
    assert set(env) == {"METRICSD_TOKEN", "METRICSD_INGEST_CURVE_SECRET_KEY_FILE"}
    env["METRICSD_TOKEN"] = "from-openssl"
    key_file = env["METRICSD_INGEST_CURVE_SECRET_KEY_FILE"]
    assert key_file.startswith("/etc/metricsd/keys/")
    env["METRICSD_INGEST_CURVE_SECRET_KEY_FILE"] = key_file.replace("/etc/metricsd/keys", str(keys))
    preflight(serve_config(cmd, environ=env))


def test_one_image_name_and_tag_everywhere() -> None:
    tag = image_tag()
    assert (
        f"docker build -f deploy/docker/Dockerfile -t {tag} ."
        in (DOCKER / "Dockerfile").read_text()
    )
    for name, service in compose()["services"].items():
        if "build" in service:
            assert service["image"] == tag, name
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/sidecar.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == tag
    mentioned = set(
        re.findall(r"\bmetricsd:[0-9]+\.[0-9]+\.[0-9]+", (ROOT / "docs/operations.md").read_text())
    )
    assert mentioned == {tag}


def compose() -> dict[str, Any]:
    data = load_yaml(DOCKER / "compose.yaml")
    assert isinstance(data, dict)
    return data


def test_compose_runs_metricsd_prometheus_and_grafana(tmp_path: Path) -> None:
    data = compose()
    services = data["services"]
    assert set(services) == {"keygen", "metricsd", "prometheus", "grafana"}
    metricsd = services["metricsd"]
    build = metricsd["build"]
    assert (DOCKER / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    assert services["keygen"]["build"] == build
    command = metricsd["command"]
    assert command[:5] == ["serve", "--http", "0.0.0.0:9465", "--insecure", "--demo"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # published on this host only
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)
            else:
                assert source in data["volumes"], (name, source)
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services)
    assert services["prometheus"]["depends_on"]["metricsd"]["condition"] == "service_healthy"
    assert metricsd["depends_on"]["keygen"]["condition"] == "service_completed_successfully"


def test_compose_ingest_takes_other_containers_with_curve(tmp_path: Path) -> None:
    """The keygen init step and the daemon share the key volume; the daemon's ingest listens on
    the compose network and starts (CURVE key present); keygen is safe to run on every up."""
    services = compose()["services"]
    keygen, metricsd = services["keygen"], services["metricsd"]
    (key_mount,) = keygen["volumes"]
    volume, key_dir = key_mount.split(":")
    assert f"{volume}:{key_dir}:ro" in metricsd["volumes"]
    keys = tmp_path / "keys"
    keys.mkdir()
    args = [w.replace(key_dir, str(keys)) for w in keygen["command"]]
    for _ in range(2):  # every `docker compose up` runs it: the key is kept
        result = CliRunner().invoke(main, args, env={})
        assert result.exit_code == 0, result.output
    env = {k: v.replace(key_dir, str(keys)) for k, v in metricsd["environment"].items()}
    config = serve_config(metricsd["command"], environ=env)
    assert config.ingest.endpoints == ("tcp://0.0.0.0:5557",)
    assert config.ingest.curve_secret_key_file == str(keys / "curve.key")
    assert config.demo.enabled and config.http.listen == "0.0.0.0:9465"
    preflight(config)  # starts: --insecure for HTTP, CURVE for ingest
    assert IngestCurve.from_config(config.ingest) is not None
    # The emit command in the header reaches it from another container, with the public key.
    (run,) = commented_commands(DOCKER / "compose.yaml", "run --rm metricsd emit")
    emit_args = run[run.index("metricsd", run.index("--rm")) + 1 :]
    assert emit_args[emit_args.index("--server-key") + 1] == f"{key_dir}/curve.pub"
    assert emit_args[emit_args.index("--ingest") + 1] == "tcp://metricsd:5557"
    main.make_context("metricsd", list(emit_args))  # a valid command line


def test_compose_prometheus_scrapes_metricsd_and_loads_the_slo_rules(tmp_path: Path) -> None:
    data = compose()
    mounts = dict(v.split(":")[:2] for v in data["services"]["prometheus"]["volumes"])
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rules_dir = mounts["../prometheus"]
    config = load_yaml(DOCKER / "prometheus.yml")
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    port = data["services"]["metricsd"]["command"][2].rsplit(":", 1)[1]
    assert "5557" not in " ".join(data["services"]["metricsd"]["ports"])  # ingest: network only
    assert static["targets"] == [f"metricsd:{port}"] and job["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["rules/slo-recording-rules.yml", "rules/slo-alerting-rules.yml"]
    for rule_file in config["rule_files"]:
        # Relative to the config file's directory, i.e. inside the mounted rules directory.
        inside = "/etc/prometheus/" + rule_file
        assert inside.startswith(rules_dir + "/")
        assert (DOCKER / "../prometheus" / inside[len(rules_dir) + 1 :]).is_file()
    if PROMTOOL is not None:  # the same layout as in the container
        shutil.copy(DOCKER / "prometheus.yml", tmp_path / "prometheus.yml")
        (tmp_path / "rules").symlink_to((DOCKER / "../prometheus").resolve())
        result = subprocess.run(
            [PROMTOOL, "check", "config", "prometheus.yml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def test_grafana_provisioning_matches_compose_and_the_dashboard() -> None:
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/metricsd.yaml")["providers"]
    assert provider["type"] == "file"
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    env = compose()["services"]["grafana"]["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}


def test_dashboard_structure() -> None:
    data = dashboard()
    assert data["uid"] == "metricsd" and data["schemaVersion"] >= 36
    panels = data["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "bargauge"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"])
    queries = " ".join(expressions())
    # The views the dashboard promises: throughput, latency and TTFT quantiles, errors and burn
    # rates, cost and budgets.
    for needle in (
        "rate(llm_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(llm_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(llm_time_to_first_token_seconds_bucket",
        "rate(llm_errors_total",
        "llm_slo_burn_rate",
        "slo:current_burn_rate:ratio",
        "llm_cost_usd_total",
        "llm_budget_used_usd",
        "llm_budget_limit_usd",
    ):
        assert needle in queries, needle
    for expr in expressions():
        for inner in re.findall(r"histogram_quantile\([0-9.]+, sum by \(([^)]*)\)", expr):
            assert "le" in [label.strip() for label in inner.split(",")], expr


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by what they expand to, so promtool can parse the query."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$(model|endpoint)\b", ".*", expr)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
        for i, e in enumerate(expressions())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- OpenTelemetry Collector ------------------------------------------------------------------


def test_collector_pipelines_use_only_defined_components() -> None:
    config = load_yaml(ROOT / "deploy/otel/collector.yaml")
    (pipeline,) = config["service"]["pipelines"].values()
    for kind in ("receivers", "processors", "exporters"):
        assert pipeline[kind] and set(pipeline[kind]) <= set(config[kind]), kind
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    assert set(pipeline["receivers"]) == {"otlp", "prometheus"}
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    (scrape,) = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"] == [{"targets": ["127.0.0.1:9465"]}]
    assert "prometheus" in pipeline["exporters"]
    assert pipeline["processors"][0] == "memory_limiter"  # first, as the collector advises


# --- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_sidecar() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/sidecar.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    (app,) = pod["containers"]
    assert sidecar["name"] == "metricsd" and sidecar["restartPolicy"] == "Always"
    token = {e["name"]: e for e in sidecar["env"]}["METRICSD_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "metricsd-token", "key": "token"}
    config = serve_config(sidecar["args"], environ={"METRICSD_TOKEN": "from-the-secret"})
    check_exposure(config)  # pod IP with a token, ipc ingest: starts without --insecure
    assert not config.auth.insecure
    (endpoint,) = config.ingest.endpoints
    assert endpoint.startswith("ipc://")
    socket_dir = str(Path(endpoint[len("ipc://") :]).parent)
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    app_mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    assert mounts[socket_dir] == app_mounts[socket_dir]  # the socket's directory is shared
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[socket_dir]]
    assert {e["name"]: e["value"] for e in app["env"]}["METRICSD_INGEST"] == endpoint
    state_dir = str(Path(config.state.path).parent)
    assert state_dir in mounts  # the state file is on a volume, not the read-only root
    port = int(config.http.listen.rsplit(":", 1)[1])
    (named,) = sidecar["ports"]
    assert named == {"name": "metrics", "containerPort": port}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "metrics"}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = kinds["Service"]["spec"]
    assert service["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == "metrics"


def test_cli_parser_rejects_unknown_flags() -> None:
    # serve_config is what checks the flags in the files above: make sure it can fail.
    with pytest.raises(click.UsageError):
        serve_config(["serve", "--no-such-flag"])
