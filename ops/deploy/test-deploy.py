"""Deployment tests: the relay's image and Kubernetes manifests, run as users run them.

Run by ops/test-deploy (which sets up podman and finds the image) against a running stack
(MONGODB_URI, AMQP_URL, STACK_NAME for `ops/stack stop-rabbit`/`start-rabbit`):

- container: the relay container beside the stack (host network, read-only root file system,
  settings from the environment and the URIs from secret files mounted read-only). A pymongo
  writer adds events in the seed's shape {type, aggregateId, data, timestamp}; all are delivered
  (status in MongoDB, message ids on a queue bound to the exchange); `podman stop` exits 0 within
  its grace period; `podman kill` mid-drain and a new container lose nothing; the container's
  health check turns unhealthy while the broker is stopped and healthy when it is back, while
  /health/live stays up.
- kubernetes: the manifests pass kubernetes-validate (strict) and, with the stack's addresses
  substituted, `podman kube play` runs the Deployment's two relay pods over a backlog; one pod is
  removed mid-drain; nothing is lost.
- systemd: `systemd-analyze verify` of the unit (ExecStart pointed at the image's binary) and
  `systemd-analyze security` of it.

Prints one line per check and closes with `deploy: N passed, M failed`; exits 1 if any failed.
"""

import base64
import datetime
import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import pika
import yaml
from pymongo import MongoClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
IMAGE = os.environ.get("OUTBOX_IMAGE", "localhost/outbox:latest")
MONGODB_URI = os.environ["MONGODB_URI"]
AMQP_URL = os.environ["AMQP_URL"]
RUN = secrets.token_hex(3)
EXCHANGE = "orders"
# The uid the image runs as (its USER); secret files are given to it, mode 0400 or 0440.
RELAY_UID = 10001
# Longer than the relay's RELAY_SHUTDOWN_TIMEOUT (30s), as the pod's terminationGracePeriodSeconds.
STOP_GRACE = 45

results = {"passed": 0, "failed": 0}
cleanups = []


def log(message):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def podman(*args, timeout=180, ok=True):
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if ok and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}…: exit {done.returncode}: {done.stderr.strip()[-800:]}")
    return done


def wait_for(condition, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Outbox:
    """The stack's database as a writer and an operator see it: one database per scenario."""

    def __init__(self, database):
        self.client = MongoClient(MONGODB_URI, serverSelectionTimeoutMS=10000)
        self.database = database
        self.collection = self.client[database]["outbox"]
        self.ids = []

    def write(self, count, prefix):
        """`count` events in the seed's event-store shape, written as a plain service writes them."""
        now = datetime.datetime.now(datetime.timezone.utc)
        for start in range(0, count, 500):
            documents = [
                {"type": "OrderCreated", "aggregateId": f"{prefix}-{i}", "data": {"orderId": f"{prefix}-{i}", "totalAmount": i}, "timestamp": now}
                for i in range(start, min(count, start + 500))
            ]
            self.ids += [str(oid) for oid in self.collection.insert_many(documents).inserted_ids]

    def delivered(self):
        return self.collection.count_documents({"status": "delivered"})

    def not_delivered(self):
        return self.collection.count_documents({"status": {"$ne": "delivered"}})

    def lease_owners(self):
        live = self.client[self.database]["outbox_leases"].find({"owner": {"$ne": None}, "expiresAt": {"$gt": datetime.datetime.now(datetime.timezone.utc)}})
        return {lease["owner"] for lease in live}

    def drop(self):
        self.client.drop_database(self.database)
        self.client.close()


class Queue:
    """A durable queue bound to the relay's exchange, to see what reached the broker."""

    def __init__(self, name):
        self.name = name
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        channel.queue_declare(name, durable=True)
        channel.queue_bind(name, EXCHANGE, routing_key="#")
        connection.close()

    def message_ids(self):
        """Every message now on the queue (consumed): the list of their message ids."""
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        ids = []
        for method, properties, _ in channel.consume(self.name, inactivity_timeout=3):
            if method is None:
                break
            ids.append(properties.message_id)
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
        connection.close()
        return ids

    def delete(self):
        try:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            connection.channel().queue_delete(self.name)
            connection.close()
        except Exception as error:  # the broker may be down after a failed step
            log(f"could not delete queue {self.name}: {error}")


def nothing_lost(name, outbox, queue):
    """Every event delivered in MongoDB, and every event id on the queue (duplicates allowed: at least once)."""
    pending = outbox.not_delivered()
    check(f"{name}: every event marked delivered", pending == 0, f"{len(outbox.ids)} written, {pending} not delivered")
    received = queue.message_ids()
    missing = set(outbox.ids) - set(received)
    check(
        f"{name}: every event reached the queue",
        not missing,
        f"{len(received)} messages, {len(set(received))} distinct, {len(missing)} missing"
        + (f" (e.g. {sorted(missing)[:3]})" if missing else ""),
    )


def test_data(kind):
    """A database and a queue of their own for one test, dropped at the end."""
    database = f"deploy_{kind}_{RUN}"
    outbox = Outbox(database)
    queue = Queue(f"deploy-{kind}-{RUN}")
    cleanups.append(queue.delete)
    cleanups.append(outbox.drop)
    return database, outbox, queue


def secret_files(folder, mode):
    """The URIs as container secrets: one file each, readable by the relay's uid only."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in (("mongodb_uri", MONGODB_URI), ("amqp_url", AMQP_URL)):
        path = folder / name
        path.write_text(value + "\n")
        os.chown(path, RELAY_UID, RELAY_UID)
        path.chmod(mode)
    return folder


# MARK: - The container


def port_open(host, port):
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_relay(name, database, secrets_dir, port, extra_env=()):
    """Starts the relay container as a user would (see README, "Run it")."""
    env = {
        "OUTBOX_DATABASE": database,
        "MONGODB_URI_FILE": "/run/secrets/outbox/mongodb_uri",
        "AMQP_URL_FILE": "/run/secrets/outbox/amqp_url",
        "RELAY_HTTP_ADDRESS": f"127.0.0.1:{port}",
        "RELAY_LEASE_TTL": "5s",
        "RELAY_ID": name,
        **dict(extra_env),
    }
    args = ["run", "-d", "--name", name, "--network", "host", "--read-only", f"--stop-timeout={STOP_GRACE}"]
    args += ["-v", f"{secrets_dir}:/run/secrets/outbox:ro"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    podman(*args, IMAGE)
    cleanups.append(lambda: podman("rm", "-f", "-t", "0", name, ok=False))


def health(name):
    """Runs the image's HEALTHCHECK once (podman schedules it with systemd timers, absent here) and
    returns the container's health status."""
    podman("healthcheck", "run", name, ok=False, timeout=30)
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")


def container_state(name):
    return json.loads(podman("inspect", name).stdout)[0]["State"]


def rss_mib(name):
    pid = container_state(name)["Pid"]
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def toolchain_free():
    """(ok, detail): no compiler, linker, shell or package manager among the image's files."""
    holder = f"outbox-files-{RUN}"
    podman("create", "--name", holder, IMAGE)
    try:
        export = subprocess.run(["podman", "export", holder], capture_output=True, timeout=180)
        listing = subprocess.run(["tar", "-t"], input=export.stdout, capture_output=True, timeout=60).stdout.decode().splitlines()
    finally:
        podman("rm", holder, ok=False)
    names = {pathlib.PurePosixPath(entry).name for entry in listing}
    found = sorted(names & {"swiftc", "swift-frontend", "swift-build", "clang", "cc", "gcc", "ld", "sh", "bash", "dash", "apt", "dpkg"})
    return (bool(listing) and not found, f"{len(listing)} files; found: {', '.join(found) or 'none'}")


def test_container(work):
    log("container: image checks")
    inspected = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = inspected["Config"]
    user = config.get("User", "")
    check("image runs as a numeric non-root user", user.split(":")[0].isdigit() and not user.startswith("0"), f"USER {user!r}")
    healthcheck = (inspected.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test") or []
    check("image has a HEALTHCHECK without a shell", bool(healthcheck) and "CMD-SHELL" not in healthcheck, " ".join(healthcheck))
    size = int(inspected["Size"])
    check("image is at most 150 MiB", size <= 150 * 1024 * 1024, f"{size / 1048576:.1f} MiB")
    listing = podman("run", "--rm", "--network", "none", "--entrypoint", "/usr/local/bin/outboxctl", IMAGE, "--help", ok=False)
    check("outboxctl runs in the image", listing.returncode == 0 and "probe" in listing.stdout, listing.stdout.strip()[:80])
    check("image holds no compiler, shell or package manager", *toolchain_free())

    database, outbox, queue = test_data("container")
    secrets_dir = secret_files(work / "container-secrets", 0o400)
    port = free_port()

    log("container: 1,000 events through the relay container")
    first = f"outbox-relay-a-{RUN}"
    run_relay(first, database, secrets_dir, port)
    healthy = wait_for(lambda: health(first) == "healthy", 60, 1)
    check("container becomes healthy (outboxctl probe: /health/ready)", healthy, health(first) or container_state(first).get("Status", ""))
    started = time.monotonic()
    outbox.write(1000, f"c{RUN}")
    drained = wait_for(lambda: outbox.not_delivered() == 0, 120)
    check("1,000 events delivered by the container", drained, f"{outbox.delivered()} delivered in {time.monotonic() - started:.1f}s")
    rss = rss_mib(first)
    print(f"measured: relay RSS after 1,000 events {rss:.1f} MiB")

    log("container: podman stop (SIGTERM) mid-drain")
    outbox.write(4000, f"d{RUN}")
    wait_for(lambda: outbox.delivered() >= 1000 + 300, 60, 0.1)
    before = outbox.delivered()
    started = time.monotonic()
    podman("stop", "-t", str(STOP_GRACE), first, timeout=STOP_GRACE + 30)
    took = time.monotonic() - started
    state = container_state(first)
    check(
        "podman stop: the relay exits 0 within the grace period",
        state.get("ExitCode") == 0 and took < STOP_GRACE,
        f"exit {state.get('ExitCode')} after {took:.1f}s (grace {STOP_GRACE}s), {before - 1000} of 4,000 delivered when stopped",
    )

    log("container: podman kill (SIGKILL) mid-drain, then a new container")
    second = f"outbox-relay-b-{RUN}"
    run_relay(second, database, secrets_dir, port, {"RELAY_BATCH_SIZE": "100"})
    wait_for(lambda: outbox.delivered() >= before + 300, 60, 0.1)
    podman("kill", "-s", "KILL", second)
    at_kill = outbox.delivered()
    check("podman kill came mid-drain", before < at_kill < 5000, f"{at_kill} of 5,000 delivered at the kill")
    third = f"outbox-relay-c-{RUN}"
    run_relay(third, database, secrets_dir, port)
    third_started = time.monotonic()
    drained = wait_for(lambda: outbox.not_delivered() == 0, 180)
    check("a new container delivers the rest (after the killed relay's leases expire)", drained, f"{outbox.delivered()} of 5,000 delivered")
    nothing_lost("container", outbox, queue)
    print(f"measured: relay RSS after 4,000 more events {rss_mib(third):.1f} MiB")

    log("container: health while the broker is stopped")
    # Failures count only after the image's start period (20s).
    wait_for(lambda: health(third) == "healthy", 60, 1)
    time.sleep(max(0.0, 21 - (time.monotonic() - third_started)))
    stack = lambda action: subprocess.run([str(OPS / "stack"), action], capture_output=True, text=True, timeout=180)
    stack("stop-rabbit")
    broker = urllib.parse.urlsplit(AMQP_URL.split(",")[0])
    stopped = wait_for(lambda: not port_open(broker.hostname, broker.port or 5672), 30)
    check("ops/stack stopped the broker the relay uses", stopped, f"{broker.hostname}:{broker.port} (STACK_NAME={os.environ.get('STACK_NAME')})")
    try:
        unhealthy = wait_for(lambda: health(third) == "unhealthy", 90, 2)
        check("health turns unhealthy while the broker is stopped", unhealthy, health(third))
        live = podman("exec", third, "/usr/local/bin/outboxctl", "probe", "--live", ok=False)
        check("/health/live stays up meanwhile (an outage is no reason to restart)", live.returncode == 0, live.stdout.strip())
    finally:
        started_rabbit = stack("start-rabbit")
    check("broker started again", started_rabbit.returncode == 0, started_rabbit.stderr.strip()[-300:])
    healthy = wait_for(lambda: health(third) == "healthy", 90, 2)
    check("health turns healthy again when the broker is back", healthy, health(third))
    outbox.write(100, f"e{RUN}")
    drained = wait_for(lambda: outbox.not_delivered() == 0, 90)
    check("events written after the outage are delivered", drained, f"{outbox.not_delivered()} not delivered")
    started = time.monotonic()
    podman("stop", "-t", str(STOP_GRACE), third, timeout=STOP_GRACE + 30)
    check("podman stop after the drain: exit 0", container_state(third).get("ExitCode") == 0, f"{time.monotonic() - started:.1f}s")

    log("container: /health/live while the relay loop hangs on a frozen database")
    # A short liveness timeout (it must exceed the confirm timeout plus 5s). A frozen server keeps
    # its connections open and answers nothing, so the relay's pass hangs instead of failing.
    fourth = f"outbox-relay-d-{RUN}"
    run_relay(fourth, database, secrets_dir, port, {"RELAY_LIVENESS_TIMEOUT": "7s", "RELAY_CONFIRM_TIMEOUT": "1s"})
    wait_for(lambda: health(fourth) == "healthy", 60, 1)
    probe_live = lambda: podman("exec", fourth, "/usr/local/bin/outboxctl", "probe", "--live", ok=False, timeout=30)
    check("/health/live answers 200 while the loop runs", probe_live().returncode == 0)
    stack("pause-mongo")
    try:
        started = time.monotonic()
        stalled = wait_for(lambda: probe_live().returncode != 0, 30, 1)
        answer = probe_live().stdout.strip()
        check("/health/live fails once no pass completed for RELAY_LIVENESS_TIMEOUT (7s)", bool(stalled), f"{answer} after {time.monotonic() - started:.1f}s")
    finally:
        stack("resume-mongo")
    recovered = wait_for(lambda: probe_live().returncode == 0, 60, 1)
    check("/health/live answers 200 again once the loop completes a pass", bool(recovered), probe_live().stdout.strip())
    podman("stop", "-t", str(STOP_GRACE), fourth, timeout=STOP_GRACE + 30)


# MARK: - Kubernetes


KUBE = OPS / "deploy" / "kubernetes"


def pods_of(deployment):
    return sorted(line for line in podman("pod", "ps", "--format", "{{.Name}}").stdout.split() if line.startswith(f"{deployment}-pod-"))


def test_kubernetes(work):
    log("kubernetes: validating the manifests")
    files = sorted(KUBE.glob("*.yaml"))
    validated = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("kubernetes-validate")), "--strict", "--quiet", *map(str, files)],
        capture_output=True,
        text=True,
    )
    check(f"kubernetes-validate --strict ({len(files)} files)", validated.returncode == 0, (validated.stdout + validated.stderr).strip()[-600:])

    documents = [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]
    kinds = {doc["kind"]: doc for doc in documents}
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = kinds["ConfigMap"]["data"]
    seconds = lambda text: int(text.rstrip("s"))
    check("Deployment has at least 2 replicas", deployment["spec"]["replicas"] >= 2, str(deployment["spec"]["replicas"]))
    check(
        "terminationGracePeriodSeconds is above RELAY_SHUTDOWN_TIMEOUT",
        pod["terminationGracePeriodSeconds"] > seconds(config["RELAY_SHUTDOWN_TIMEOUT"]),
        f"{pod['terminationGracePeriodSeconds']}s > {config['RELAY_SHUTDOWN_TIMEOUT']}",
    )
    liveness = container["livenessProbe"]
    check(
        "liveness probe on /health/live gives up only after more than the lease TTL",
        liveness["httpGet"]["path"] == "/health/live"
        and liveness["periodSeconds"] * liveness["failureThreshold"] > seconds(config["RELAY_LEASE_TTL"]),
        f"{liveness['periodSeconds']}s x {liveness['failureThreshold']} vs lease TTL {config['RELAY_LEASE_TTL']}",
    )
    check("readiness probe on /health/ready", container["readinessProbe"]["httpGet"]["path"] == "/health/ready")
    security = container["securityContext"]
    check(
        "non-root, read-only root file system",
        pod["securityContext"]["runAsNonRoot"] and security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"],
    )

    log("kubernetes: podman kube play of the manifests against the stack")
    database, outbox, queue = test_data("kube")
    # Substitutions, and why:
    # - the Secret's values become the stack's URIs; podman 4.3 writes secret volume files still
    #   base64-encoded, so the play mounts the same two files from a host folder instead;
    # - the pods share the host network to reach the stack on 127.0.0.1, so each relay's HTTP
    #   endpoint takes a free port (port 0) instead of 9400, the port declaration goes (podman
    #   refuses port mappings with host networking) and the probes are left out (podman turns
    #   httpGet probes into curl commands, which the image does not have; the container test
    #   checks the health endpoints);
    # - the ConfigMap names this test's database, a smaller batch (so that the drain lasts long
    #   enough to remove a pod in its middle) and a 5s lease TTL (a quicker takeover).
    secrets_dir = secret_files(work / "kube-secrets", 0o440)
    os.chown(secrets_dir, 0, RELAY_UID)
    secrets_dir.chmod(0o750)
    name = f"outbox-relay-{RUN}"
    config_map = kinds["ConfigMap"]
    config_map["metadata"]["name"] = name
    config_map["data"].update({"OUTBOX_DATABASE": database, "RELAY_HTTP_ADDRESS": "127.0.0.1:0", "RELAY_BATCH_SIZE": "100", "RELAY_LEASE_TTL": "5s"})
    deployment["metadata"]["name"] = name
    pod["hostNetwork"] = True
    container["envFrom"][0]["configMapRef"]["name"] = name
    for field in ("startupProbe", "livenessProbe", "readinessProbe", "ports"):
        container.pop(field, None)
    pod["volumes"] = [{"name": "secrets", "hostPath": {"path": str(secrets_dir), "type": "Directory"}}]
    played = work / "play.yaml"
    played.write_text(yaml.safe_dump_all([config_map, deployment], sort_keys=False))

    outbox.write(3000, f"k{RUN}")
    started = time.monotonic()
    play = podman("kube", "play", str(played), ok=False, timeout=300)
    cleanups.append(lambda: [podman("pod", "rm", "-f", "-t", "0", pod_name, ok=False) for pod_name in pods_of(name)])
    check("podman kube play starts the Deployment", play.returncode == 0, (play.stderr or play.stdout).strip()[-400:])
    if play.returncode != 0:
        return
    pods = pods_of(name)
    check("two relay pods run", len(pods) == 2, ", ".join(pods))
    owners = wait_for(lambda: len(outbox.lease_owners()) >= 2 and outbox.lease_owners(), 60, 0.2) or outbox.lease_owners()
    check("both pods hold partitions", len(owners) >= 2, ", ".join(sorted(owners)))
    wait_for(lambda: outbox.delivered() >= 600, 120, 0.1)
    removed = pods[-1]
    podman("pod", "rm", "-f", "-t", "0", removed, timeout=120)  # SIGKILL: no lease handed back
    at_removal = outbox.delivered()
    check("one pod removed mid-drain", at_removal < 3000, f"{removed} removed with {at_removal} of 3,000 delivered")
    drained = wait_for(lambda: outbox.not_delivered() == 0, 180)
    check(
        "the remaining pod delivers the rest",
        drained,
        f"{outbox.delivered()} of 3,000 delivered in {time.monotonic() - started:.1f}s",
    )
    nothing_lost("kubernetes", outbox, queue)
    remaining = pods[0]
    started = time.monotonic()
    podman("pod", "stop", "-t", str(pod["terminationGracePeriodSeconds"]), remaining, timeout=120)
    relay = container_state(f"{remaining}-{container['name']}")
    check(
        "the remaining pod stops gracefully (exit 0 within terminationGracePeriodSeconds)",
        relay.get("ExitCode") == 0 and time.monotonic() - started < pod["terminationGracePeriodSeconds"],
        f"exit {relay.get('ExitCode')} after {time.monotonic() - started:.1f}s",
    )
    podman("pod", "rm", "-f", remaining, ok=False)


# MARK: - systemd


def test_systemd(work):
    unit = OPS / "deploy" / "outbox-relay.service"
    if not shutil.which("systemd-analyze"):
        check("systemd-analyze is installed", False)
        return
    # verify wants ExecStart's binary to exist: the unit's own, else a copy of the unit pointed
    # at the image's binary (taken out of the image).
    text = unit.read_text()
    exec_start = next(line.split("=", 1)[1].split()[0] for line in text.splitlines() if line.startswith("ExecStart="))
    target = work / "systemd" / unit.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.access(exec_start, os.X_OK):
        shutil.copy(unit, target)
    else:
        holder = f"outbox-binary-{RUN}"
        podman("create", "--name", holder, IMAGE)
        podman("cp", f"{holder}:/usr/local/bin/outbox-relay", str(target.parent / "outbox-relay"))
        podman("rm", holder)
        target.write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={target.parent / 'outbox-relay'}"))
    verify = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True)
    check("systemd-analyze verify outbox-relay.service", verify.returncode == 0 and not verify.stderr.strip(), verify.stderr.strip()[-500:])
    security = subprocess.run(["systemd-analyze", "--offline=true", "security", str(target)], capture_output=True, text=True)
    print(security.stdout.rstrip())
    overall = [line for line in security.stdout.splitlines() if "Overall exposure level" in line]
    score = float(overall[0].split(":")[1].split()[0]) if overall else 10.0
    check("systemd-analyze security: exposure at most 2.0 (OK)", security.returncode == 0 and score <= 2.0, overall[0].strip() if overall else security.stderr.strip()[-300:])


def main():
    only = sys.argv[1:] or ["container", "kubernetes", "systemd"]
    work = pathlib.Path(tempfile.mkdtemp(prefix="outbox-deploy-"))
    started = time.monotonic()
    try:
        for name, test in (("container", test_container), ("kubernetes", test_kubernetes), ("systemd", test_systemd)):
            if name not in only:
                continue
            try:
                test(work)
            except Exception as error:
                check(f"{name}: ran to the end", False, f"{type(error).__name__}: {error}")
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as error:
                log(f"cleanup: {error}")
        shutil.rmtree(work, ignore_errors=True)
    print(f"measured: deployment tests took {time.monotonic() - started:.0f}s")
    print(f"deploy: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
