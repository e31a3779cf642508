"""docker-compose.yml (and its GPU overlay) against our CLI, the Dockerfiles, and the Prometheus and
Grafana configs it mounts: every command parses, every address names a service and a port it
listens on, every mounted file exists. (Docker itself is not on these machines.)"""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import pytest
import yaml

from cli.main import COMMANDS, build_parser
from tests.conftest import REPO

PROMETHEUS_PORT, GRAFANA_PORT = 9090, 3000


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def resolved(value: str) -> str:
    """Compose's ${VAR:-default}, as a clean environment resolves it."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture(scope="module")
def compose() -> dict:
    base = load("docker-compose.yml")
    for service in base["services"].values():
        if "command" in service:
            service["command"] = [resolved(c) for c in service["command"]]
    return base


def listening(compose: dict) -> dict[str, int]:
    """service -> the port its process listens on inside the network (ours and the router give --port)."""
    ports = {name: int(flag(s["command"], "--port")) for name, s in compose["services"].items()
             if "--port" in s.get("command", [])}
    return ports | {"prometheus": PROMETHEUS_PORT, "grafana": GRAFANA_PORT}


def test_every_semipd_command_parses_with_our_cli(compose):
    parser, modules = build_parser()
    commands = [s["command"] for s in compose["services"].values() if s.get("command", [""])[0] == "semipd"]
    commands.append(load("docker-compose.gpu.yml")["services"]["engine"]["command"])
    for dockerfile in sorted((REPO / "deploy").glob("*.Dockerfile")):
        commands.append(json.loads(re.search(r"^CMD (.+)$", dockerfile.read_text(), re.M).group(1)))
    assert len(commands) >= 6
    for command in commands:
        assert command[0] == "semipd" and command[1] in COMMANDS, command
        args, extra = parser.parse_known_args(command[1:])  # argparse exits on a bad flag or value
        assert not extra or getattr(modules[command[1]], "PASSTHROUGH", False), (command, extra)


def test_ports_and_addresses_name_services_that_listen_there(compose):
    services, ports = compose["services"], listening(compose)
    for name, service in services.items():
        published = [p.rsplit(":", 2) for p in service.get("ports", [])]
        # the fleet's engines are reached through the router only
        assert name.startswith("engine-") or [p for p in published if int(p[-1]) == ports[name]], \
            f"{name} does not publish its port"
        # nothing reachable beyond this host unless the operator opts in
        assert all(len(p) == 3 and p[0] == "127.0.0.1" for p in published), f"{name} publishes {published}"
        command = service.get("command", [])
        targets = [(o, flag(command, o)) for o in ("--engine", "--tuner", "--prometheus") if o in command]
        if "--worker-urls" in command:  # the router's engines
            urls = command[command.index("--worker-urls") + 1:]
            targets += [("--worker-urls", u) for u in urls[:next((i for i, u in enumerate(urls) if u.startswith("--")), None)]]
        for option, url in targets:
            target = urlparse(url)
            assert target.hostname in services, f"{name} {option} names no service: {target.hostname}"
            assert target.port == ports[target.hostname], f"{name} {option} port {target.port} != {ports[target.hostname]}"
    health = " ".join(services["engine"]["healthcheck"]["test"])
    assert f":{ports['engine']}/health" in health
    from stack.fleet import ROUTER_HEALTH  # the fleet profile's router checks engines as `semipd up`'s does

    router = services["router"]["command"]
    assert all(flag(router, name) == value for name, value in zip(ROUTER_HEALTH[::2], ROUTER_HEALTH[1::2]))


def test_prometheus_scrapes_every_engine_the_tuner_and_the_router_where_they_listen(compose):
    services, ports = compose["services"], listening(compose)
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"]}
    config_path = next(arg.split("=", 1)[1] for arg in services["prometheus"]["command"] if arg.startswith("--config.file="))
    config = yaml.safe_load((REPO / mounts[config_path]).read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    engines = [name for name in services if name == "engine" or name.startswith("engine-")]
    assert targets == {"semipd-engine": [f"{name}:{ports[name]}" for name in engines],
                       "semipd-tuner": [f"tuner:{ports['tuner']}"],
                       "semipd-router": [f"router:{flag(services['router']['command'], '--prometheus-port')}"]}
    # `semipd tune --prometheus` selects the engine's series by the instance label Prometheus gives it
    assert urlparse(flag(services["tuner"]["command"], "--engine")).netloc == targets["semipd-engine"][0]


def test_grafana_reads_that_prometheus_and_finds_the_dashboard(compose):
    services = compose["services"]
    mounts = {m.split(":")[1]: REPO / m.split(":")[0] for m in services["grafana"]["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert urlparse(datasource["url"]).hostname == "prometheus" and urlparse(datasource["url"]).port == PROMETHEUS_PORT
    provider = yaml.safe_load((provisioning / "dashboards" / "semipd.yml").read_text())["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    panels = json.loads((dashboards / "semipd.json").read_text())["panels"]
    assert {p["title"] for p in panels} >= {"TTFT (s)", "TPOT (s)", "SLO attainment per window", "load", "compute split"}
    assert all(t["datasource"]["uid"] == datasource["uid"] for p in panels for t in p["targets"])


def test_volumes_and_build_files_exist(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert (REPO / source).exists() if source.startswith(".") else source in declared, (name, mount)
        if "build" in service:
            dockerfile = REPO / service["build"]["context"] / service["build"]["dockerfile"]
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    assert all((REPO / p).exists() for p in line.split()[1:-1]), line


def test_keys_are_required_from_the_environment_and_never_on_a_command_line(compose):
    """Compose's ${VAR:?message} refuses to start when VAR is unset or empty, printing the message:
    each service that serves control routes beyond its container gets its key that way."""
    from contract.access import ADMIN_KEY_ENV, TUNER_KEY_ENV, check_exposure

    services = compose["services"]
    required = {}
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            needed = re.fullmatch(r"\$\{(\w+):\?(.+)\}", str(value))
            if needed:
                assert needed.group(1) == var and f"set {var}" in needed.group(2), (name, value)
                required.setdefault(name, set()).add(var)
    assert required == {"engine": {ADMIN_KEY_ENV}, "tuner": {ADMIN_KEY_ENV, TUNER_KEY_ENV}, "engine-a": {ADMIN_KEY_ENV},
                        "engine-b": {ADMIN_KEY_ENV}, "router": {ADMIN_KEY_ENV}}
    for name, key_env in (("engine", ADMIN_KEY_ENV), ("tuner", TUNER_KEY_ENV)):
        host = flag(services[name]["command"], "--host")
        check_exposure(host, key_env in required[name] and "set", name, "")  # what the service itself checks
        with pytest.raises(ValueError):
            check_exposure(host, None, name, "")  # and, without the key, would refuse
    for service in services.values():
        command = " ".join(service.get("command", []))
        assert not re.search(r"--(admin-api-key|api-key|admin-key|key|control-plane-api-keys)\b", command), command
    # the router's key is read from its environment inside the container
    assert "$$SEMIPD_ADMIN_KEY" in " ".join(services["router"]["entrypoint"])


def test_the_fleet_profile_pins_two_engines_and_the_router_fronts_them(compose):
    from sglang_router.launch_router import parse_router_args

    services = compose["services"]
    fleet = {name for name, s in services.items() if "fleet" in s.get("profiles", [])}
    assert fleet == {"engine-a", "engine-b", "router"}
    assert {services["engine-a"]["cpuset"], services["engine-b"]["cpuset"]} == {"0", "1"}
    parse_router_args(services["router"]["command"])  # the installed router takes every flag
