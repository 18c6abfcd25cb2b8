#!/usr/bin/env python3
"""Offline checks of Tessera's Kubernetes deployment (run by scripts/k8s-check.sh).

1. `kubectl kustomize` builds the base, every overlay and the examples of
   components under k8s/tests.
2. Every rendered object validates against the Kubernetes OpenAPI schema
   (kubernetes-validate, strict: unknown fields are errors), and the
   FoundationDBCluster against k8s/crds/foundationdbcluster-v1beta2.schema.json.
3. The rules a rollout depends on (probes, requests and limits, the shard
   drain and its grace period, the telnet gateway's drain and its grace
   period, the router and telnet Services, telnet over TLS on the players'
   telnet Service with the certificate of a kubernetes.io/tls Secret,
   arm64 placement, browser players' page and WebTransport certificate
   where a router serves the page (--web), ...), and
   etcd's: TLS with client certificates for clients and peers, every role
   that uses it showing its own client certificate (the Secret
   tessera-etcd-<role>, never another role's nor the old shared
   tessera-etcd-client), a NetworkPolicy that admits exactly those roles;
   a NetworkPolicy for every workload (issue 15, least privilege): the
   players' and metrics ports open to everyone, every other port to the
   roles of ADMITTED only (by app.kubernetes.io/name, never everyone), and
   every role that passes --persistence, --auth, --chat or --assets among
   them;
   and the cluster's Secrets: no Secret
   carries the CA key (ca-key.pem) and no pod mounts it, each role's
   --cluster-ca directory is its own Secret tessera-member-<role>, only auth
   mounts tessera-auth-signing, only routers and telnet gateways (the
   certificate alone) tessera-router-quic.
4. Every flag a container passes is one `tessera <role> --help` lists
   (when target/debug/tessera is built; scripts/test.sh builds it first).
   The world ConfigMap's files match worlds/default; the Grafana dashboard
   and the alerts only query metrics the code exports (a metric exists when
   its name is a string literal in some */src/**/*.rs), and each alert's
   runbook is a section of docs/deploy.md; the Dockerfile's shape.
5. Self-tests: broken objects that each check must reject, so the checks
   are known to be able to fail.
"""

import copy
import json
import pathlib
import re
import subprocess
import sys

import dockerfile
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_VERSION = "1.32"  # k3s v1.32 (kubectl on the dev machines is v1.32 too)
OVERLAYS = ["dev", "orangepi-staging", "production"]
# Example overlays of a component (k8s/tests/*): checked by every rule, as the overlays are.
EXAMPLES = ["tests/browser-players"]
FDB_SCHEMA = json.loads((K8S / "crds" / "foundationdbcluster-v1beta2.schema.json").read_text())
# What tests/cluster_faults.rs measured (written by the rolling-restart test).
DRAIN_MEASURED = ROOT / "target" / "tmp" / "rolling-restart-drain.json"
WORKLOADS = ("Deployment", "StatefulSet")

failures = []


def fail(where, what):
    failures.append(f"{where}: {what}")


def render(path):
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        fail(path.relative_to(ROOT), f"kubectl kustomize failed: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------- schemas


def schema_errors(obj):
    """Schema problems of one object, as strings (empty: valid)."""
    if obj.get("kind") == "FoundationDBCluster":
        v = jsonschema.Draft7Validator(FDB_SCHEMA)
        return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema: {e}"]
    return []


# ------------------------------------------------------------------ rules


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def containers(obj):
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec.get("containers", [])


def rule_errors(objs, overlay, drain_measured_s):
    """Violations of the deployment rules in one rendered overlay."""
    errs = []
    by = {}
    for o in objs:
        by[(o["kind"], o["metadata"]["name"])] = o
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(o)
        for c in containers(o):
            where = f"{name_of(o)} container {c['name']}"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(kind, {}):
                        errs.append(f"{where}: no {kind}.{r}")
            is_init = c in spec.get("initContainers", [])
            if not is_init:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        errs.append(f"{where}: no {probe}")
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                errs.append(f"{where}: image {image!r} has no pinned tag")
            if o["metadata"]["name"] != "etcd":
                sc = spec.get("securityContext", {})
                if not sc.get("runAsNonRoot"):
                    errs.append(f"{where}: pod does not set runAsNonRoot")
        if o["metadata"]["name"] != "etcd":
            ann = o["spec"]["template"]["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") != "true":
                errs.append(f"{name_of(o)}: no prometheus.io/scrape annotation")
            main = spec["containers"][0]
            probe_paths = {
                main.get("livenessProbe", {}).get("httpGet", {}).get("path"),
                main.get("readinessProbe", {}).get("httpGet", {}).get("path"),
            }
            if probe_paths != {"/healthz", "/readyz"}:
                errs.append(f"{name_of(o)}: probes are {probe_paths}, not /healthz and /readyz")
        if overlay in ("orangepi-staging", "production"):
            if spec.get("nodeSelector", {}).get("kubernetes.io/arch") != "arm64":
                errs.append(f"{name_of(o)}: does not select arm64 nodes")

    shard = by.get(("Deployment", "shard"))
    if shard is None:
        errs.append("no Deployment/shard")
    else:
        spec = pod_spec(shard)
        c = spec["containers"][0]
        drains = [a for a in c.get("args", []) if a.startswith("--drain-timeout-secs=")]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if not drains:
            errs.append("shard: no --drain-timeout-secs (SIGTERM must drain)")
        else:
            drain = int(drains[-1].split("=", 1)[1])
            if drain <= 0:
                errs.append("shard: --drain-timeout-secs=0 stops without draining")
            if grace < drain + 10:
                errs.append(
                    f"shard: terminationGracePeriodSeconds {grace} leaves less than 10 s after "
                    f"the {drain} s drain timeout (SIGKILL would cut the drain)"
                )
            replicas = shard["spec"].get("replicas", 1)
            if drain_measured_s is not None and replicas > 1 and drain < drain_measured_s * 2:
                errs.append(
                    f"shard: drain timeout {drain} s is under twice the measured drain "
                    f"({drain_measured_s:.1f} s)"
                )
        if drain_measured_s is not None and grace <= drain_measured_s:
            errs.append(f"shard: grace {grace} s is not above the measured drain {drain_measured_s:.1f} s")
        pre_stop = c.get("lifecycle", {}).get("preStop")
        if pre_stop is not None:
            errs.append("shard: a preStop hook delays SIGTERM, which is what drains the shard")
        strategy = shard["spec"].get("strategy", {})
        if shard["spec"].get("replicas", 1) > 1 and (
            strategy.get("type") != "RollingUpdate"
            or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 0
        ):
            errs.append("shard: rolling updates must start a new shard before draining an old one (maxUnavailable 0)")
        anti = spec.get("affinity", {}).get("podAntiAffinity", {})
        if not anti:
            errs.append("shard: no pod anti-affinity (shards must spread over nodes)")
        pdb = by.get(("PodDisruptionBudget", "shard"))
        if pdb is None:
            errs.append("shard: no PodDisruptionBudget")

    errs += gateway_errors(by)
    errs += web_errors(by)

    svc = by.get(("Service", "router"))
    if svc is None:
        errs.append("no Service/router")
    else:
        ports = {(p["port"], p.get("protocol", "TCP")) for p in svc["spec"]["ports"]}
        if (4433, "UDP") not in ports:
            errs.append("router Service: does not expose UDP 4433")
        if (4000, "TCP") in ports:
            errs.append("router Service: exposes TCP 4000 (telnet is the telnet gateway's: Service tessera-telnet)")
        if svc["spec"].get("type") != "LoadBalancer":
            errs.append("router Service: not a LoadBalancer")
        if svc["spec"].get("sessionAffinity") != "ClientIP":
            errs.append("router Service: no ClientIP session affinity (QUIC flows would move)")

    # k3s's ServiceLB binds each LoadBalancer port on the nodes: two
    # Services asking for one port and protocol leave one of them pending.
    claimed = {}
    for o in objs:
        if o["kind"] == "Service" and o["spec"].get("type") == "LoadBalancer":
            for p in o["spec"]["ports"]:
                key = (p["port"], p.get("protocol", "TCP"))
                if key in claimed:
                    errs.append(f"Services {claimed[key]} and {o['metadata']['name']} both expose {key[1]} {key[0]}")
                claimed[key] = o["metadata"]["name"]

    hpa = by.get(("HorizontalPodAutoscaler", "router"))
    if overlay != "dev":
        if hpa is None:
            errs.append("router: no HorizontalPodAutoscaler")
        else:
            cpu = [
                m for m in hpa["spec"].get("metrics", [])
                if m.get("resource", {}).get("name") == "cpu"
            ]
            if not cpu or cpu[0]["resource"]["target"].get("averageUtilization") != 70:
                errs.append("router HPA: not CPU 70%")
            if hpa["spec"].get("minReplicas", 1) < 2:
                errs.append("router HPA: fewer than 2 replicas")

    coord = by.get(("Deployment", "coordinator"))
    if coord is not None and overlay != "dev" and coord["spec"].get("replicas", 1) < 2:
        errs.append("coordinator: fewer than 2 replicas (no standby leader)")

    persistence = by.get(("Deployment", "persistence"))
    fdb = by.get(("FoundationDBCluster", "tessera-fdb"))
    if persistence is not None:
        args = persistence["spec"]["template"]["spec"]["containers"][0].get("args", [])
        uses_fdb = any(a.startswith("--fdb-cluster-file=") for a in args)
        if overlay == "dev" and (uses_fdb or fdb is not None):
            errs.append("dev: persistence must use redb, without FoundationDB")
        if overlay == "production" and (not uses_fdb or fdb is None):
            errs.append("production: persistence must use the FoundationDBCluster")
        if uses_fdb:
            vols = {v["name"]: v for v in pod_spec(persistence).get("volumes", [])}
            cm = vols.get("fdb-config", {}).get("configMap", {}).get("name")
            if fdb is None or cm != f"{fdb['metadata']['name']}-config":
                errs.append("persistence: does not mount the FoundationDB operator's cluster file")
    etcd = by.get(("StatefulSet", "etcd"))
    if overlay == "production" and (etcd is None or etcd["spec"].get("replicas") != 3):
        errs.append("production: etcd must have 3 members")
    if etcd is not None:
        env = {e["name"]: e.get("value", "") for e in etcd["spec"]["template"]["spec"]["containers"][0]["env"]}
        members = env.get("ETCD_INITIAL_CLUSTER", "").count("=http")
        if members != etcd["spec"].get("replicas", 1):
            errs.append(f"etcd: {etcd['spec'].get('replicas')} replicas but {members} in ETCD_INITIAL_CLUSTER")
        if not etcd["spec"].get("volumeClaimTemplates"):
            errs.append("etcd: no persistent volumes")
    errs += etcd_tls_errors(objs, by)
    errs += network_policy_errors(objs)
    errs += secret_errors(objs)
    return errs


ETCD_SECRET_PREFIX = "tessera-etcd-"
ETCD_SERVER_SECRET = "tessera-etcd-server"
# Once every role's, so any of them could write any key: gone.
OLD_ETCD_CLIENT_SECRET = "tessera-etcd-client"
ETCD_CLIENT_FILES = {"--etcd-ca": "ca.pem", "--etcd-cert": "client.pem", "--etcd-key": "client-key.pem"}


def etcd_secret(role):
    """The Secret of a role's etcd client certificate (CN tessera-<role>, etcd's user for it)."""
    return f"{ETCD_SECRET_PREFIX}{role}"


def etcd_tls_errors(objs, by):
    """etcd over TLS: etcd serves clients and peers only with certificates
    its CA signed, every role that passes --etcd shows its own client
    certificate, of the Secret tessera-etcd-<role>, over https://, and the
    NetworkPolicy admits exactly those roles to the client port."""
    errs = []
    users = set()
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(o)
        for c in spec.get("containers", []):
            if arg_value(c, "--etcd") is None:
                continue
            users.add(o["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name"))
            role = ROLE_OF_COMMAND.get(command_of(c))
            if role is None:
                errs.append(f"{name_of(o)} container {c['name']}: passes --etcd but runs {command_of(c)!r}, "
                            "no role with an etcd user")
                continue
            want = etcd_secret(role)
            for flag, key in ETCD_CLIENT_FILES.items():
                path = arg_value(c, flag)
                if path is None:
                    errs.append(f"{name_of(o)}: passes --etcd without {flag} (etcd takes TLS clients only)")
                elif mounted_secret_key(spec, c, path) != (want, key):
                    errs.append(f"{name_of(o)}: {flag} {path} is not {key} of the Secret {want} "
                                f"(`tessera {command_of(c)}` is etcd user tessera-{role})")
    for o in objs:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tessera-config"):
            for url in o.get("data", {}).get("TESSERA_ETCD", "").split(","):
                if url and not url.startswith("https://"):
                    errs.append(f"{name_of(o)}: TESSERA_ETCD endpoint {url} is not https://")
    etcd = by.get(("StatefulSet", "etcd"))
    if etcd is None:
        return errs
    c = pod_spec(etcd)["containers"][0]
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
    for var in ("ETCD_CLIENT_CERT_AUTH", "ETCD_PEER_CLIENT_CERT_AUTH"):
        if env.get(var) != "true":
            errs.append(f"etcd: {var} is not true (it would take any client)")
    for var in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS",
                "ETCD_INITIAL_ADVERTISE_PEER_URLS", "ETCD_INITIAL_CLUSTER"):
        if "http://" in env.get(var, "http://"):
            errs.append(f"etcd: {var} is not https:// only")
    for var in ("ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE",
                "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE"):
        if not env.get(var):
            errs.append(f"etcd: no {var}")
        elif mounted_secret_key(pod_spec(etcd), c, env[var]) is None:
            errs.append(f"etcd: {var} {env[var]} is no file of a mounted Secret")
    probe = c.get("readinessProbe", {}).get("httpGet", {})
    if probe and probe.get("port") in ("client", 2379):
        errs.append("etcd: the readiness probe asks the client port, which wants a client certificate")
    policy = by.get(("NetworkPolicy", "etcd"))
    if policy is None:
        return errs + ["etcd: no NetworkPolicy (any pod could reach its client and peer ports)"]
    if policy["spec"].get("podSelector", {}).get("matchLabels") != {"app.kubernetes.io/name": "etcd"}:
        errs.append("NetworkPolicy/etcd: does not select the etcd pods")
    if "Ingress" not in policy["spec"].get("policyTypes", []):
        errs.append("NetworkPolicy/etcd: does not restrict ingress")
    admitted = {}
    for rule in policy["spec"].get("ingress", []):
        names = rule_peers(rule)
        for port in rule.get("ports") or [{"port": "*"}]:
            admitted.setdefault(port.get("port", "*"), set()).update(names)
    for port, who in admitted.items():
        if port == "*":
            errs.append("NetworkPolicy/etcd: a rule admits every port")
    if admitted.get("client", set()) != users:
        errs.append(
            f"NetworkPolicy/etcd: the client port admits {sorted(admitted.get('client', set()))}, "
            f"not the roles that use etcd {sorted(users)}"
        )
    if admitted.get("peer", set()) != {"etcd"}:
        errs.append(f"NetworkPolicy/etcd: the peer port admits {sorted(admitted.get('peer', set()))}, not etcd only")
    return errs


# ------------------------------------------------------- NetworkPolicies

NAME_LABEL = "app.kubernetes.io/name"
# A peer that is not a set of roles: every pod, another namespace, an address block.
EVERYONE = "*"
# Who may reach each port that is neither a players' port nor a metrics
# port, by the app.kubernetes.io/name of the pods (issue 15: least
# privilege). From the code: on the cluster bus shards take player traffic
# from routers and everything else from shards, routers take only what
# shards send (coordinator/src/identity.rs, may_send), and the leading
# coordinator's liveness watchdog dials every shard and router
# (coordinator/src/liveness.rs); the telnet gateways dial the routers' QUIC
# port, a players' port. The services are dialled by the roles that pass
# their flag (SERVICE_FLAGS), and by `tessera ctl` in an operator's pod
# labelled `ctl` (docs/deploy.md, "NetworkPolicies"). etcd: as the policy's
# own check (etcd_tls_errors) wants it.
ADMITTED = {
    ("etcd", "client"): {"coordinator", "shard", "router", "telnet-gateway", "persistence", "auth", "asset"},
    ("etcd", "peer"): {"etcd"},
    ("router", "cluster"): {"shard", "coordinator"},
    ("shard", "cluster"): {"shard", "router", "coordinator"},
    ("persistence", "persistence"): {"shard", "router", "auth", "chat", "asset", "ctl"},
    ("auth", "auth"): {"router", "ctl"},
    ("chat", "chat"): {"router"},
    ("asset", "http"): {"shard", "ctl"},
}
# Open to everyone: the players' ports (the Services router and
# tessera-telnet; a router's own telnet port, which no Service exposes,
# plays the same login; the web client's page, components/browser-players,
# which the ingress controller's pods fetch for the browsers).
PUBLIC_PORTS = {("router", "telnet"), ("router", "quic"), ("router", "web"),
                ("telnet-gateway", "telnet"), ("telnet-gateway", "telnet-tls")}
# Open to everyone too: /healthz, /readyz, /metrics (etcd: /health), for
# the kubelet's probes (from the node) and Prometheus (another namespace).
METRICS_PORT = "metrics"
# The flag that points a role at a service -> the (workload, port) it dials.
SERVICE_FLAGS = {
    "--persistence": ("persistence", "persistence"),
    "--auth": ("auth", "auth"),
    "--chat": ("chat", "chat"),
    "--assets": ("asset", "http"),
}


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions) selects a pod's labels; an
    empty selector selects every pod."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (op == "In" and labels.get(key) not in values) \
                or (op == "NotIn" and key in labels and labels[key] in values) \
                or (op == "Exists" and key not in labels) \
                or (op == "DoesNotExist" and key in labels):
            return False
    return True


def selected_names(selector):
    """The app.kubernetes.io/name values a pod selector admits, or None when it is not a
    set of names alone (empty: every pod; other labels; other operators)."""
    match = selector.get("matchLabels") or {}
    if set(match) - {NAME_LABEL}:
        return None
    sets = [{match[NAME_LABEL]}] if NAME_LABEL in match else []
    for e in selector.get("matchExpressions") or []:
        if e.get("key") != NAME_LABEL or e.get("operator") != "In":
            return None
        sets.append(set(e.get("values") or []))
    return set.intersection(*sets) if sets else None


def rule_peers(rule):
    """The roles (app.kubernetes.io/name) an ingress rule admits, with EVERYONE for a rule
    without `from` and for a peer that is not a pod selector of names alone (a
    namespaceSelector, an ipBlock, an empty podSelector)."""
    peers = rule.get("from") or []
    if not peers:
        return {EVERYONE}
    names = set()
    for peer in peers:
        chosen = selected_names(peer["podSelector"]) if set(peer) == {"podSelector"} else None
        names |= {EVERYONE} if chosen is None else chosen
    return names


def rule_covers(rule, port):
    """Whether an ingress rule's ports include a container port (by name or number, and
    protocol; a rule without ports covers every port)."""
    ports = rule.get("ports")
    if not ports:
        return True
    number, protocol = port["containerPort"], port.get("protocol", "TCP")
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None or want in (port.get("name"), number):
            return True
        if isinstance(want, int) and p.get("endPort") and want <= number <= p["endPort"]:
            return True
    return False


def ingress_policies(objs):
    """The NetworkPolicies that restrict ingress (policyTypes names Ingress, or is absent)."""
    return [o for o in objs if o["kind"] == "NetworkPolicy"
            and "Ingress" in (o["spec"].get("policyTypes") or ["Ingress"])]


def network_policy_errors(objs):
    """Least privilege on the pod network: every workload's pods are selected by an
    ingress NetworkPolicy named after the workload; the players' ports and the metrics
    port are open to everyone; every other container port admits named roles only (pod
    selectors on app.kubernetes.io/name, never everyone), exactly the roles of ADMITTED;
    and every role that passes a service's flag is one ADMITTED lets in."""
    errs = []
    policies = ingress_policies(objs)
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        labels = o["spec"]["template"]["metadata"].get("labels", {})
        app = labels.get(NAME_LABEL)
        for c in pod_spec(o).get("containers", []):
            for flag, target in SERVICE_FLAGS.items():
                if arg_value(c, flag) is not None and app not in ADMITTED[target]:
                    errs.append(f"{name_of(o)}: passes {flag}, but {target[0]}'s {target[1]} port does not "
                                f"admit {app} (ADMITTED in k8s/tests/check_manifests.py, and the policy)")
        mine = [p for p in policies if selects(p["spec"].get("podSelector") or {}, labels)]
        if not mine:
            errs.append(f"{name_of(o)}: no NetworkPolicy selects its pods (every pod could reach every port)")
            continue
        if app not in {p["metadata"]["name"] for p in mine}:
            errs.append(f"{name_of(o)}: no NetworkPolicy named {app} selects its pods")
        for c in pod_spec(o).get("containers", []):
            for port in c.get("ports", []):
                who = set()
                for p in mine:
                    for rule in p["spec"].get("ingress") or []:
                        if rule_covers(rule, port):
                            who |= rule_peers(rule)
                name = port.get("name")
                where = f"{name_of(o)} port {name or port['containerPort']}/{port.get('protocol', 'TCP')}"
                if (app, name) in PUBLIC_PORTS or name == METRICS_PORT:
                    if EVERYONE not in who:
                        why = "the probes and Prometheus" if name == METRICS_PORT else "the players"
                        errs.append(f"{where}: not open to everyone ({why} need it); admits {sorted(who) or 'nobody'}")
                    continue
                want = ADMITTED.get((app, name))
                if EVERYONE in who:
                    errs.append(f"{where}: a NetworkPolicy admits everyone (or a namespace, or an address "
                                f"block), not only the roles {sorted(want or [])}")
                elif want is None:
                    errs.append(f"{where}: no entry in ADMITTED (k8s/tests/check_manifests.py): say which roles "
                                "may reach it")
                elif who != want:
                    errs.append(f"{where}: admits {sorted(who) or 'nobody'}, not {sorted(want)}")
    return errs


def arg_value(container, flag):
    """The value of the last `--flag=value` in a container's args, or None."""
    values = [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(f"{flag}=")]
    return values[-1] if values else None


def pre_stop_seconds(container):
    """How long a `sleep N` preStop hook holds SIGTERM back (0 without one)."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] in ("sleep", "/bin/sleep"):
        return int(command[1])
    return 0


def mounted_secret_key(pod, container, path):
    """(Secret name, key) of the Secret file a container sees at `path`, or None."""
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        secret = vols.get(m["name"], {}).get("secret")
        if secret is None:
            continue
        if m.get("subPath"):
            if path != mount:
                continue
            rel = m["subPath"]
        elif path.startswith(mount + "/"):
            rel = path[len(mount) + 1:]
        else:
            continue
        items = secret.get("items")
        if items is None:
            return secret["secretName"], rel
        for item in items:
            if item["path"] == rel:
                return secret["secretName"], item["key"]
    return None


TELNET_TLS_SECRET = "tessera-telnet-tls"
TELNET_TLS_FILES = {"--telnet-tls-cert": "tls.crt", "--telnet-tls-key": "tls.key"}
TELNET_TLS_PORT = 4443


def container_port(container, target):
    """The number of the container port a Service's targetPort (a name or a number) names, or None."""
    for p in container.get("ports", []):
        if target in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


def mount_at(container, path):
    """The volumeMount under which a container sees `path`, or None."""
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if path == mount or (not m.get("subPath") and path.startswith(mount + "/")):
            return m
    return None


def gateway_tls_errors(spec, c):
    """Telnet over TLS on the gateway: plain telnet carries passwords in clear
    text, so the gateway serves TLS too, with the certificate and key of the
    kubernetes.io/tls Secret (a gateway has no certificate for players of its
    own), mounted read-only. Returns the errors and the TLS port (None without one)."""
    addr = arg_value(c, "--telnet-tls")
    if addr is None:
        return ["telnet-gateway: no --telnet-tls (plain telnet sends passwords in clear text)"], None
    errs = []
    port = int(addr.rsplit(":", 1)[1])
    if container_port(c, port) is None:
        errs.append(f"telnet-gateway: --telnet-tls port {port} is no port of the container")
    for flag, key in TELNET_TLS_FILES.items():
        path = arg_value(c, flag)
        if path is None:
            errs.append(f"telnet-gateway: --telnet-tls without {flag} (a gateway has no certificate for players of its own)")
        elif mounted_secret_key(spec, c, path) != (TELNET_TLS_SECRET, key):
            errs.append(f"telnet-gateway: {flag} {path} is not {key} of the Secret {TELNET_TLS_SECRET}")
        elif not mount_at(c, path).get("readOnly"):
            errs.append(f"telnet-gateway: {flag} {path} is not mounted read-only")
    return errs, port


def gateway_errors(by):
    """The telnet gateway: the drain its rollouts rely on, telnet over TLS, and its Service."""
    errs = []
    gw = by.get(("Deployment", "telnet-gateway"))
    if gw is None:
        return ["no Deployment/telnet-gateway (telnet players' entry point)"]
    spec = pod_spec(gw)
    c = spec["containers"][0]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    drain = arg_value(c, "--drain-timeout-secs")
    if drain is None:
        errs.append("telnet-gateway: no --drain-timeout-secs (SIGTERM must drain its players)")
    else:
        drain, pre_stop = int(drain), pre_stop_seconds(c)
        if drain <= 0:
            errs.append("telnet-gateway: --drain-timeout-secs=0 drops every player at once")
        if grace < pre_stop + drain + 10:
            errs.append(
                f"telnet-gateway: terminationGracePeriodSeconds {grace} leaves less than 10 s after "
                f"the {pre_stop} s preStop and the {drain} s drain timeout (SIGKILL would cut the drain)"
            )
    strategy = gw["spec"].get("strategy", {})
    if strategy.get("type") != "RollingUpdate" or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 0:
        errs.append("telnet-gateway: rolling updates must start a new gateway before draining an old one (maxUnavailable 0)")
    if not spec.get("affinity", {}).get("podAntiAffinity"):
        errs.append("telnet-gateway: no pod anti-affinity (gateways must spread over nodes)")
    if ("PodDisruptionBudget", "telnet-gateway") not in by:
        errs.append("telnet-gateway: no PodDisruptionBudget")
    # It pins the certificate the routers serve: the same Secret key.
    router = by.get(("Deployment", "router"))
    if router is not None:
        repo = pod_spec(router)["containers"][0]["image"].rsplit(":", 1)[0]
        if c["image"].rsplit(":", 1)[0] != repo:
            errs.append(f"telnet-gateway: image {c['image']!r} is not the routers' image ({repo})")
    cert = arg_value(c, "--router-cert")
    if cert is None:
        errs.append("telnet-gateway: no --router-cert")
    elif router is not None:
        served = mounted_secret_key(pod_spec(router), pod_spec(router)["containers"][0], "/data/quic-cert.der")
        pinned = mounted_secret_key(spec, c, cert)
        if pinned is None or pinned != served:
            errs.append(f"telnet-gateway: --router-cert {cert} is {pinned}, not the routers' certificate {served}")
    tls_errs, tls_port = gateway_tls_errors(spec, c)
    errs += tls_errs

    svc = by.get(("Service", "tessera-telnet"))
    if svc is None:
        return errs + ["no Service/tessera-telnet"]
    ports = {(p["port"], p.get("protocol", "TCP")): p for p in svc["spec"]["ports"]}
    if (4000, "TCP") not in ports:
        errs.append("tessera-telnet Service: does not expose TCP 4000")
    else:
        target = ports[(4000, "TCP")].get("targetPort", 4000)
        names = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
        if target not in names:
            errs.append(f"tessera-telnet Service: targetPort {target!r} is no port of the gateway container")
    # Players who can use TLS must find it where they find telnet.
    if (TELNET_TLS_PORT, "TCP") not in ports:
        errs.append(f"tessera-telnet Service: does not expose TCP {TELNET_TLS_PORT} (telnet over TLS)")
    elif tls_port is not None:
        target = ports[(TELNET_TLS_PORT, "TCP")].get("targetPort", TELNET_TLS_PORT)
        if container_port(c, target) != tls_port:
            errs.append(
                f"tessera-telnet Service: TCP {TELNET_TLS_PORT} goes to {target!r}, "
                f"not the gateway's --telnet-tls port {tls_port}"
            )
    if svc["spec"].get("type") != "LoadBalancer":
        errs.append("tessera-telnet Service: not a LoadBalancer")
    selector = svc["spec"].get("selector", {})
    labels = gw["spec"]["template"]["metadata"].get("labels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        errs.append("tessera-telnet Service: its selector does not select the telnet-gateway pods")
    return errs


WEB_TLS_SECRET = "tessera-web-tls"
WEB_TLS_FILES = {"--web-cert": "tls.crt", "--web-key": "tls.key"}
# Where the image keeps the web client's bundle (the Dockerfile copies it there).
WEB_DIR = "/usr/share/tessera/web"


def web_errors(by):
    """Browser players (components/browser-players), where a router serves the
    page (--web): the bundle of the image, and on the QUIC port the certificate
    of the kubernetes.io/tls Secret, mounted read-only (behind the Service,
    several routers cannot each publish their own development certificate's
    hash); the Service tessera-web reaches the page, and the Ingress serves it
    over HTTPS with the same Secret."""
    router = by.get(("Deployment", "router"))
    if router is None:
        return []
    spec = pod_spec(router)
    c = spec["containers"][0]
    addr = arg_value(c, "--web")
    if addr is None:
        return []
    errs = []
    port = int(addr.rsplit(":", 1)[1])
    if container_port(c, port) is None:
        errs.append(f"router: --web port {port} is no port of the container")
    if arg_value(c, "--web-dir") != WEB_DIR:
        errs.append(f"router: --web-dir is {arg_value(c, '--web-dir')!r}, not the image's bundle {WEB_DIR}")
    for flag, key in WEB_TLS_FILES.items():
        path = arg_value(c, flag)
        if path is None:
            errs.append(f"router: --web without {flag} (behind the Service a page may take one router's "
                        "development certificate hash and connect to another)")
        elif mounted_secret_key(spec, c, path) != (WEB_TLS_SECRET, key):
            errs.append(f"router: {flag} {path} is not {key} of the Secret {WEB_TLS_SECRET}")
        elif not mount_at(c, path).get("readOnly"):
            errs.append(f"router: {flag} {path} is not mounted read-only")
    svc = by.get(("Service", "tessera-web"))
    if svc is None:
        return errs + ["router: --web but no Service/tessera-web"]
    if not any(container_port(c, p.get("targetPort", p["port"])) == port for p in svc["spec"]["ports"]):
        errs.append(f"tessera-web Service: no port goes to the router's --web port {port}")
    ingress = by.get(("Ingress", "tessera-web"))
    if ingress is None:
        return errs + ["router: --web but no Ingress/tessera-web (browsers need the page over HTTPS)"]
    backends = {p["backend"].get("service", {}).get("name")
                for r in ingress["spec"].get("rules", []) for p in r.get("http", {}).get("paths", [])}
    if backends != {"tessera-web"}:
        errs.append(f"Ingress/tessera-web: sends to {sorted(map(str, backends))}, not the Service tessera-web")
    if {t.get("secretName") for t in ingress["spec"].get("tls", [])} != {WEB_TLS_SECRET}:
        errs.append(f"Ingress/tessera-web: does not serve HTTPS with the Secret {WEB_TLS_SECRET}")
    return errs


# ------------------------------------------------- the cluster's Secrets

# `tessera ca k8s-secret` prints one Secret per use (src/k8s_secret.rs): each
# role's member Secret, the auth signing key, the routers' QUIC certificate.
# The CA key stays on the operator's machine: a pod that held it could mint a
# certificate for any role.
CA_KEY_FILE = "ca-key.pem"
OLD_CLUSTER_SECRET = "tessera-cluster"  # held everything, the CA key included
MEMBER_SECRET_PREFIX = "tessera-member-"
MEMBER_FILES = ("ca-cert.pem", "member-cert.pem", "member-key.pem")
AUTH_SIGNING_SECRET = "tessera-auth-signing"
ROUTER_QUIC_SECRET = "tessera-router-quic"
# `tessera <command>` -> the role its member certificate names.
ROLE_OF_COMMAND = {
    "coordinator": "coordinator",
    "shard": "shard",
    "router": "router",
    "persistence": "persistence",
    "auth": "auth",
    "chat": "chat",
    "asset": "asset",
    "telnet-gateway": "gateway",
}


def member_secret(role):
    return f"{MEMBER_SECRET_PREFIX}{role}"


def secret_uses(spec):
    """Every Secret a pod spec reaches, as (where, Secret name, files): files
    is a list of (key, path), or None when every key of the Secret is
    reached (a volume without items, envFrom). Secret volumes, projected
    volumes' Secret sources, env secretKeyRef and envFrom secretRef."""
    uses = []
    for v in spec.get("volumes", []):
        sources = []
        if "secret" in v:
            sources.append((v["secret"].get("secretName"), v["secret"].get("items")))
        for s in v.get("projected", {}).get("sources", []):
            if "secret" in s:
                sources.append((s["secret"].get("name"), s["secret"].get("items")))
        for name, items in sources:
            files = None if items is None else [(i["key"], i["path"]) for i in items]
            uses.append((f"volume {v['name']}", name, files))
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                uses.append((f"container {c['name']} env {e['name']}", ref.get("name"), [(ref["key"], e["name"])]))
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                uses.append((f"container {c['name']} envFrom", e["secretRef"].get("name"), None))
    return uses


def command_of(c):
    """The `tessera` subcommand a container runs (its first arg), or None."""
    args = c.get("args") or []
    if c.get("command") or not args or args[0].startswith("-"):
        return None
    return args[0]


def pod_roles(spec):
    """The member roles of a pod's Tessera containers (telnet-gateway: gateway)."""
    roles = set()
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        role = ROLE_OF_COMMAND.get(command_of(c))
        if role is not None:
            roles.add(role)
    return roles


def describe_file(found):
    return "no file of a mounted Secret" if found is None else f"{found[1]} of the Secret {found[0]}"


def ca_key_errors(objs):
    """The CA key is in no Secret and mounted by no pod: no Secret item, key
    or path named ca-key.pem, no use of the old all-in-one Secret
    tessera-cluster (which held it), and no rendered Secret carrying it."""
    errs = []
    for o in objs:
        if o["kind"] == "Secret":
            for field in ("data", "stringData"):
                if CA_KEY_FILE in (o.get(field) or {}):
                    errs.append(
                        f"{name_of(o)}: carries {CA_KEY_FILE} in {field}: the cluster CA's key must be in "
                        "no Secret (it stays with `tessera ca`; pods get tessera-member-<role>)"
                    )
        if o["kind"] not in WORKLOADS:
            continue
        for where, secret, files in secret_uses(pod_spec(o)):
            if secret == OLD_CLUSTER_SECRET:
                errs.append(
                    f"{name_of(o)}: {where} uses the Secret {OLD_CLUSTER_SECRET}, which no longer exists "
                    f"(it held the CA key): mount {MEMBER_SECRET_PREFIX}<role>, {AUTH_SIGNING_SECRET} "
                    f"or {ROUTER_QUIC_SECRET}"
                )
            for key, path in files or []:
                if CA_KEY_FILE in (key, path.rsplit("/", 1)[-1]):
                    errs.append(
                        f"{name_of(o)}: {where} mounts {key} of the Secret {secret} as {path}: "
                        "no pod may hold the cluster CA's key (it could mint a certificate for any role; "
                        f"a pod has its own in {MEMBER_SECRET_PREFIX}<role>)"
                    )
    return errs


def member_secret_errors(objs):
    """Each Tessera container that passes --cluster-ca=DIR finds in DIR the
    files of its own role's Secret tessera-member-<role> (ca-cert.pem,
    member-cert.pem, member-key.pem), and no pod mounts another role's
    member Secret (which would let it pass for that role)."""
    errs = []
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(o)
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            command = command_of(c)
            ca_dir = arg_value(c, "--cluster-ca")
            if ca_dir is None:
                if command in ROLE_OF_COMMAND:
                    errs.append(f"{name_of(o)} container {c['name']}: `tessera {command}` without --cluster-ca "
                                "(the directory of its member certificate)")
                continue
            role = ROLE_OF_COMMAND.get(command)
            if role is None:
                errs.append(f"{name_of(o)} container {c['name']}: passes --cluster-ca but runs {command!r}, "
                            f"no role with a member Secret ({', '.join(sorted(ROLE_OF_COMMAND))})")
                continue
            want = member_secret(role)
            for f in MEMBER_FILES:
                path = f"{ca_dir.rstrip('/')}/{f}"
                found = mounted_secret_key(spec, c, path)
                if found != (want, f):
                    errs.append(
                        f"{name_of(o)}: --cluster-ca {path} is {describe_file(found)}, not {f} of the "
                        f"Secret {want} (`tessera {command}` is role {role})"
                    )
        roles = pod_roles(spec)
        for where, secret, files in secret_uses(spec):
            if not (secret or "").startswith(MEMBER_SECRET_PREFIX):
                continue
            role = secret[len(MEMBER_SECRET_PREFIX):]
            if role not in roles:
                errs.append(
                    f"{name_of(o)}: {where} mounts the Secret {secret}, role {role}'s member certificate, "
                    f"but the pod is role {', '.join(sorted(roles)) or 'none'}: a pod mounts its own "
                    "member Secret only"
                )
            for key, path in files or []:
                if key not in MEMBER_FILES:
                    errs.append(f"{name_of(o)}: {where} mounts {key} of the Secret {secret}, which holds "
                                f"only {', '.join(MEMBER_FILES)}")
    return errs


def shared_secret_errors(objs):
    """The Secrets that are not a member's: tessera-auth-signing (the
    session signing key) reaches the auth pods only, and its file is auth's
    --signing-key; tessera-router-quic reaches the routers (the QUIC
    certificate and key they serve from --data-dir) and the telnet gateways,
    which pin its certificate (--router-cert) and never see its key."""
    errs = []
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(o)
        roles = pod_roles(spec)
        for where, secret, files in secret_uses(spec):
            keys = None if files is None else {k for k, _ in files}
            if secret == AUTH_SIGNING_SECRET and roles != {"auth"}:
                errs.append(
                    f"{name_of(o)}: {where} mounts the Secret {AUTH_SIGNING_SECRET} (auth's session "
                    "signing key, with which anyone can forge sessions): only the auth pods may"
                )
            if secret != ROUTER_QUIC_SECRET or roles == {"router"}:
                continue
            if roles == {"gateway"}:
                if keys is None or keys - {"quic-cert.der"}:
                    got = "every key" if keys is None else ", ".join(sorted(keys))
                    errs.append(
                        f"{name_of(o)}: {where} mounts {got} of the Secret {ROUTER_QUIC_SECRET}: the telnet "
                        "gateway pins quic-cert.der only (the routers' private key stays with them)"
                    )
            else:
                errs.append(
                    f"{name_of(o)}: {where} mounts the Secret {ROUTER_QUIC_SECRET} (the routers' QUIC "
                    "certificate and key): only router and telnet-gateway pods may"
                )
        for c in spec.get("containers", []):
            command = command_of(c)
            # (flag, the file it names or None, Secret, key)
            wanted = []
            if command == "auth":
                wanted.append(("--signing-key", arg_value(c, "--signing-key"), AUTH_SIGNING_SECRET, "auth-signing.key"))
            elif command == "router":
                data = arg_value(c, "--data-dir")
                for f in ("quic-cert.der", "quic-key.der"):
                    path = f"{data.rstrip('/')}/{f}" if data else None
                    wanted.append(("--data-dir", path, ROUTER_QUIC_SECRET, f))
            elif command == "telnet-gateway":
                wanted.append(("--router-cert", arg_value(c, "--router-cert"), ROUTER_QUIC_SECRET, "quic-cert.der"))
            for flag, path, secret, key in wanted:
                if path is None:
                    errs.append(f"{name_of(o)}: no {flag} (`tessera {command}` reads {key} of the Secret {secret})")
                    continue
                found = mounted_secret_key(spec, c, path)
                if found != (secret, key):
                    errs.append(f"{name_of(o)}: {path} ({flag}) is {describe_file(found)}, "
                                f"not {key} of the Secret {secret}")
    return errs


def etcd_secret_errors(objs):
    """etcd's Secrets: a pod mounts only its own role's etcd client
    certificate tessera-etcd-<role> (whose CN is the etcd user that may touch
    only that role's keys), never another role's, nor the old
    tessera-etcd-client that every role shared; only the etcd pods mount
    the server's certificate and key (tessera-etcd-server)."""
    errs = []
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(o)
        roles = pod_roles(spec)
        is_etcd = o["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "etcd"
        for where, secret, _ in secret_uses(spec):
            secret = secret or ""
            if secret == OLD_ETCD_CLIENT_SECRET:
                errs.append(
                    f"{name_of(o)}: {where} mounts the Secret {OLD_ETCD_CLIENT_SECRET}, the client certificate "
                    f"every role once shared (any of them could write any key): mount "
                    f"{ETCD_SECRET_PREFIX}<role>, the pod's own"
                )
            elif secret == ETCD_SERVER_SECRET:
                if not is_etcd:
                    errs.append(f"{name_of(o)}: {where} mounts {ETCD_SERVER_SECRET}, etcd's own certificate "
                                "and key: only the etcd pods may")
            elif secret.startswith(ETCD_SECRET_PREFIX):
                role = secret[len(ETCD_SECRET_PREFIX):]
                if role not in roles:
                    errs.append(
                        f"{name_of(o)}: {where} mounts the Secret {secret}, role {role}'s etcd client "
                        f"certificate, but the pod is role {', '.join(sorted(roles)) or 'none'}: a pod "
                        "mounts its own etcd Secret only (each role's etcd user may touch only its keys)"
                    )
    return errs


def secret_errors(objs):
    """The rules of the cluster's Secrets (every rendered overlay, the base too)."""
    return ca_key_errors(objs) + member_secret_errors(objs) + shared_secret_errors(objs) + etcd_secret_errors(objs)



# ------------------------------------------------------- flags the binary has

TESSERA_BIN = ROOT / "target" / "debug" / "tessera"
FDB_ONLY_FLAGS = {"--fdb-cluster-file"}
_help = {}


def role_help(role):
    if role not in _help:
        out = subprocess.run([str(TESSERA_BIN), role, "--help"], capture_output=True, text=True)
        _help[role] = out.stdout if out.returncode == 0 else ""
    return _help[role]


def flag_errors(objs):
    """Flags the manifests pass that `tessera <role> --help` does not list."""
    errs = []
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        for c in pod_spec(o).get("containers", []):
            args = c.get("args") or []
            if c.get("command") or not args or args[0].startswith("-"):
                continue
            role, help_text = args[0], role_help(args[0])
            if not help_text:
                errs.append(f"{name_of(o)}: `tessera {role}` is not a command")
                continue
            # The -fdb image is built with `--features fdb`, which adds these.
            extra = FDB_ONLY_FLAGS if c.get("image", "").endswith("-fdb") else set()
            for a in args[1:]:
                flag = a.split("=", 1)[0]
                if flag in extra:
                    continue
                if flag.startswith("--") and not re.search(rf"(^|\s){re.escape(flag)}(?=[\s=,<]|$)", help_text, re.M):
                    errs.append(f"{name_of(o)}: `tessera {role}` has no flag {flag}")
    return errs


# ----------------------------------------------------- files beside the manifests


def world_errors():
    errs = []
    src = ROOT / "worlds" / "default"
    copy_dir = K8S / "base" / "world"
    want = {p.name: p.read_bytes() for p in [src / "world.toml", *sorted((src / "scripts").glob("*"))]}
    have = {p.name: p.read_bytes() for p in copy_dir.iterdir()}
    if want != have:
        errs.append(
            "k8s/base/world differs from worlds/default: copy world.toml and scripts/* again "
            f"(differs: {sorted(set(want) ^ set(have) | {k for k in want if have.get(k) != want[k]})})"
        )
    return errs


def exported_metrics():
    names = set()
    for path in ROOT.glob("**/src/**/*.rs"):
        if "target" in path.parts:
            continue
        names.update(re.findall(r'"(tessera_[a-z_]+)"', path.read_text(errors="replace")))
    return names


def dashboard_errors(dashboard, exported):
    errs = []
    queried = set()
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            for m in re.findall(r"\b(tessera_[a-z_]+)", target.get("expr", "")):
                queried.add(re.sub(r"_(bucket|sum|count)$", "", m))
    for m in sorted(queried - exported):
        errs.append(f"dashboard queries {m}, which no code exports")
    titles = " ".join(p.get("title", "").lower() for p in dashboard.get("panels", []))
    for topic in ("tick", "players", "cells", "migrations", "hand-offs"):
        if topic not in titles:
            errs.append(f"dashboard: no panel about {topic}")
    return errs


def doc_anchors(markdown):
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def alert_errors(alerts, exported, anchors):
    """Alerts that query metrics no code exports or lack a runbook section."""
    errs = []
    for group in alerts.get("groups", []):
        for rule in group.get("rules", []):
            for m in re.findall(r"\b(tessera_[a-z_]+)", rule.get("expr", "")):
                if re.sub(r"_(bucket|sum|count)$", "", m) not in exported:
                    errs.append(f"alert {rule.get('alert')} queries {m}, which no code exports")
            runbook = rule.get("annotations", {}).get("runbook", "")
            if not runbook.startswith("docs/deploy.md#") or runbook.split("#", 1)[1] not in anchors:
                errs.append(f"alert {rule.get('alert')}: runbook {runbook!r} is no section of docs/deploy.md")
    return errs


def dockerfile_errors(text):
    """Problems of a Dockerfile, parsed by BuildKit's own parser (the
    `dockerfile` package); every RUN's shell script is checked by `sh -n`."""
    try:
        cmds = dockerfile.parse_string(text)
    except dockerfile.GoParseError as e:
        return [f"Dockerfile does not parse: {e}"]
    errs = []
    froms = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
    if len(froms) < 2:
        return ["Dockerfile: not multi-stage"]
    build, final = cmds[froms[0]:froms[-1]], cmds[froms[-1]:]
    if "--platform=$BUILDPLATFORM" not in build[0].flags:
        errs.append("Dockerfile: the build stage does not run on $BUILDPLATFORM (cross-compiling)")
    runs = [" ".join(c.value) for c in build if c.cmd == "RUN"]
    if not any(re.search(r"cargo build --release --locked --bin tessera", r) for r in runs):
        errs.append("Dockerfile: does not build the tessera binary --release --locked")
    if not any("CARGO_PROFILE_RELEASE_STRIP=symbols" in r or re.search(r"\bstrip\b", r) for r in runs):
        errs.append("Dockerfile: does not strip the binary")
    if not any("protobuf-compiler" in r for r in runs):
        errs.append("Dockerfile: the build needs protobuf-compiler (etcd-client)")
    for r in runs:
        check = subprocess.run(["sh", "-n"], input=r, capture_output=True, text=True)
        if check.returncode != 0:
            errs.append(f"Dockerfile: a RUN script has a shell syntax error: {check.stderr.strip()}")
    if not any(c.cmd == "COPY" and c.value[-1].rstrip("/") == WEB_DIR for c in final):
        errs.append(f"Dockerfile: the runtime stage does not copy the web client's bundle to {WEB_DIR}")
    if any(c.cmd == "RUN" for c in final):
        errs.append("Dockerfile: the runtime stage runs commands (they would need emulation for arm64)")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errs.append("Dockerfile: the runtime stage does not switch to a non-root USER")
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    if not entry or not entry[-1].value or not entry[-1].value[0].endswith("/tessera"):
        errs.append("Dockerfile: the entrypoint is not the tessera binary")
    return errs


def dockerignore_errors(text):
    ignored = {l.strip().rstrip("/") for l in text.splitlines() if l.strip() and not l.startswith("#")}
    return [f".dockerignore: does not exclude {p}/" for p in ("target", ".git", "client/web/node_modules")
            if p not in ignored]


# ------------------------------------------------------------- self-tests


def self_tests(good_objs, exported):
    """Each broken object must be rejected by the check that guards it."""
    errs = []
    by = {(o["kind"], o["metadata"]["name"]): o for o in good_objs}

    def expect(label, problems):
        if not problems:
            errs.append(f"self-test: {label} was not rejected")

    bad = copy.deepcopy(by[("Deployment", "router")])
    bad["spec"]["replicas"] = "three"
    expect("a Deployment with a string replica count", schema_errors(bad))
    bad = copy.deepcopy(by[("Deployment", "router")])
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    expect("a container with an unknown field", schema_errors(bad))
    bad = copy.deepcopy(by[("Service", "router")])
    bad["spec"]["ports"][0]["port"] = "quic"
    expect("a Service port that is not a number", schema_errors(bad))
    bad = copy.deepcopy(by[("FoundationDBCluster", "tessera-fdb")])
    bad["spec"]["databaseConfiguration"]["redundancy_mode"] = "quadruple"
    expect("a FoundationDBCluster with redundancy_mode quadruple", schema_errors(bad))
    bad = copy.deepcopy(by[("FoundationDBCluster", "tessera-fdb")])
    bad["spec"]["procesCounts"] = bad["spec"].pop("processCounts")
    expect("a FoundationDBCluster with a misspelt field", schema_errors(bad))

    def with_change(change, check=None):
        """The errors of the good objects after `change`: of every rule, or of `check` alone."""
        objs = copy.deepcopy(good_objs)
        change({(o["kind"], o["metadata"]["name"]): o for o in objs})
        return check(objs) if check else rule_errors(objs, "production", 12.0)

    def shard_c(b):
        return b[("Deployment", "shard")]["spec"]["template"]["spec"]["containers"][0]

    expect("a shard grace period of 30 s", with_change(
        lambda b: b[("Deployment", "shard")]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30)))
    expect("a shard without --drain-timeout-secs", with_change(
        lambda b: shard_c(b).update(args=[a for a in shard_c(b)["args"] if "drain" not in a])))
    expect("a container without limits", with_change(
        lambda b: shard_c(b)["resources"].pop("limits")))
    expect("a container without a readiness probe", with_change(
        lambda b: b[("Deployment", "auth")]["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")))
    def gateway_spec(b):
        return b[("Deployment", "telnet-gateway")]["spec"]

    expect("a router Service without UDP 4433", with_change(
        lambda b: b[("Service", "router")]["spec"]["ports"][0].update(protocol="TCP")))
    expect("a router Service that exposes telnet TCP 4000 again", with_change(
        lambda b: b[("Service", "router")]["spec"]["ports"].append(
            {"name": "telnet", "port": 4000, "targetPort": "telnet", "protocol": "TCP"})))
    expect("a telnet gateway Service on TCP 4001", with_change(
        lambda b: b[("Service", "tessera-telnet")]["spec"]["ports"][0].update(port=4001)))
    def gateway_c(b):
        return gateway_spec(b)["template"]["spec"]["containers"][0]

    def gateway_volume(b, name):
        return next(v for v in gateway_spec(b)["template"]["spec"]["volumes"] if v["name"] == name)

    def telnet_ports(b):
        return b[("Service", "tessera-telnet")]["spec"]["ports"]

    def drop_tls_port(b):
        b[("Service", "tessera-telnet")]["spec"]["ports"] = [p for p in telnet_ports(b) if p["port"] != 4443]

    expect("a telnet gateway Service without the TLS port", with_change(drop_tls_port))
    expect("a telnet gateway Service sending TLS to plain telnet", with_change(
        lambda b: next(p for p in telnet_ports(b) if p["port"] == 4443).update(targetPort="telnet")))
    expect("a telnet gateway without --telnet-tls", with_change(
        lambda b: gateway_c(b).update(args=[a for a in gateway_c(b)["args"] if not a.startswith("--telnet-tls")])))
    expect("a telnet gateway with --telnet-tls but no key", with_change(
        lambda b: gateway_c(b).update(args=[a for a in gateway_c(b)["args"] if not a.startswith("--telnet-tls-key")])))
    expect("a telnet gateway serving TLS with another Secret's certificate", with_change(
        lambda b: gateway_volume(b, "telnet-tls")["secret"].update(secretName="tessera-member-gateway")))
    expect("a telnet gateway mounting its TLS key writable", with_change(
        lambda b: next(m for m in gateway_c(b)["volumeMounts"] if m["name"] == "telnet-tls").pop("readOnly")))
    expect("a telnet gateway grace period equal to its drain timeout", with_change(
        lambda b: gateway_spec(b)["template"]["spec"].update(terminationGracePeriodSeconds=3600)))
    expect("a telnet gateway rolling update with maxUnavailable 1", with_change(
        lambda b: gateway_spec(b)["strategy"]["rollingUpdate"].update(maxUnavailable=1)))
    expect("a telnet gateway pinning the routers' private key", with_change(
        lambda b: gateway_spec(b)["template"]["spec"]["volumes"][1]["secret"]["items"][0].update(key="quic-key.der")))
    expect("a telnet gateway without a liveness probe", with_change(
        lambda b: gateway_spec(b)["template"]["spec"]["containers"][0].pop("livenessProbe")))
    # The cluster's Secrets: each broken pod must be rejected by the check that guards it.
    def volume(b, deployment, name):
        return next(v for v in b[("Deployment", deployment)]["spec"]["template"]["spec"]["volumes"]
                    if v["name"] == name)

    expect("a shard whose ca volume also mounts ca-key.pem", with_change(
        lambda b: volume(b, "shard", "ca")["secret"]["items"].append({"key": "ca-key.pem", "path": "ca-key.pem"}),
        ca_key_errors))
    expect("a coordinator reading ca-key.pem into its environment", with_change(
        lambda b: b[("Deployment", "coordinator")]["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "CA_KEY", "valueFrom": {"secretKeyRef": {"name": "tessera-member-coordinator",
                                                              "key": "ca-key.pem"}}}),
        ca_key_errors))
    expect("an auth pod mounting the Secret tessera-cluster", with_change(
        lambda b: volume(b, "auth", "signing-key")["secret"].update(secretName="tessera-cluster"),
        ca_key_errors))
    expect("a rendered Secret carrying ca-key.pem", ca_key_errors(copy.deepcopy(good_objs) + [{
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tessera-member-shard"},
        "data": {"ca-cert.pem": "", "ca-key.pem": ""}}]))
    expect("a router mounting the shard's member Secret", with_change(
        lambda b: volume(b, "router", "ca")["secret"].update(secretName="tessera-member-shard"),
        member_secret_errors))
    expect("a chat pod that also mounts the auth member Secret", with_change(
        lambda b: b[("Deployment", "chat")]["spec"]["template"]["spec"]["volumes"].append(
            {"name": "auth-ca", "secret": {"secretName": "tessera-member-auth"}}),
        member_secret_errors))
    expect("a telnet gateway mounting the router's member Secret", with_change(
        lambda b: volume(b, "telnet-gateway", "ca")["secret"].update(secretName="tessera-member-router"),
        member_secret_errors))
    expect("a shard whose ca volume lacks member-key.pem", with_change(
        lambda b: volume(b, "shard", "ca")["secret"].update(
            items=[i for i in volume(b, "shard", "ca")["secret"]["items"] if i["key"] != "member-key.pem"]),
        member_secret_errors))
    expect("a chat pod mounting tessera-auth-signing", with_change(
        lambda b: b[("Deployment", "chat")]["spec"]["template"]["spec"]["volumes"].append(
            {"name": "signing-key", "secret": {"secretName": "tessera-auth-signing"}}),
        shared_secret_errors))
    expect("an auth signing key from another Secret", with_change(
        lambda b: volume(b, "auth", "signing-key")["secret"].update(secretName="tessera-member-auth"),
        shared_secret_errors))
    expect("a telnet gateway mounting quic-key.der", with_change(
        lambda b: volume(b, "telnet-gateway", "router-cert")["secret"]["items"].append(
            {"key": "quic-key.der", "path": "quic-key.der"}),
        shared_secret_errors))
    expect("a shard mounting tessera-router-quic", with_change(
        lambda b: b[("Deployment", "shard")]["spec"]["template"]["spec"]["volumes"].append(
            {"name": "quic", "secret": {"secretName": "tessera-router-quic"}}),
        shared_secret_errors))
    expect("a router mounting the shard's etcd Secret", with_change(
        lambda b: volume(b, "router", "etcd-client")["secret"].update(secretName="tessera-etcd-shard"),
        etcd_secret_errors))
    expect("a coordinator mounting the shared tessera-etcd-client", with_change(
        lambda b: volume(b, "coordinator", "etcd-client")["secret"].update(secretName="tessera-etcd-client"),
        etcd_secret_errors))
    expect("a telnet gateway that also mounts the coordinator's etcd Secret", with_change(
        lambda b: b[("Deployment", "telnet-gateway")]["spec"]["template"]["spec"]["volumes"].append(
            {"name": "more-etcd", "secret": {"secretName": "tessera-etcd-coordinator"}}),
        etcd_secret_errors))
    expect("a chat pod mounting the etcd server's Secret", with_change(
        lambda b: b[("Deployment", "chat")]["spec"]["template"]["spec"]["volumes"].append(
            {"name": "etcd", "secret": {"secretName": "tessera-etcd-server"}}),
        etcd_secret_errors))
    expect("a shard showing etcd the router's client certificate", with_change(
        lambda b: volume(b, "shard", "etcd-client")["secret"].update(secretName="tessera-etcd-router")))
    expect("an auth pod showing etcd the shared tessera-etcd-client", with_change(
        lambda b: volume(b, "auth", "etcd-client")["secret"].update(secretName="tessera-etcd-client")))
    expect("a workload without the arm64 nodeSelector", with_change(
        lambda b: b[("Deployment", "chat")]["spec"]["template"]["spec"].pop("nodeSelector")))
    expect("a grace period under the measured drain", rule_errors(good_objs, "production", 200.0))
    expect("a shard reaching etcd without a client certificate", with_change(
        lambda b: shard_c(b).update(args=[a for a in shard_c(b)["args"] if not a.startswith("--etcd-cert")])))
    expect("an etcd that takes clients without certificates", with_change(
        lambda b: b[("StatefulSet", "etcd")]["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "ETCD_CLIENT_CERT_AUTH", "value": "false"})))
    expect("an etcd client port open to the chat service", with_change(
        lambda b: b[("NetworkPolicy", "etcd")]["spec"]["ingress"][0]["from"][0]["podSelector"]
        ["matchExpressions"][0]["values"].append("chat")))
    expect("an etcd client port closed to the telnet gateway", with_change(
        lambda b: b[("NetworkPolicy", "etcd")]["spec"]["ingress"][0]["from"][0]["podSelector"]
        ["matchExpressions"][0]["values"].remove("telnet-gateway")))
    # NetworkPolicies: each broken one must be rejected, through rule_errors (as the overlays are checked).
    def ingress(b, name):
        return b[("NetworkPolicy", name)]["spec"]["ingress"]

    def roles_of(b, name, rule=0):
        return ingress(b, name)[rule]["from"][0]["podSelector"]["matchExpressions"][0]["values"]

    expect("an overlay without the persistence NetworkPolicy", rule_errors(
        [o for o in copy.deepcopy(good_objs) if name_of(o) != "NetworkPolicy/persistence"], "production", 12.0))
    expect("a NetworkPolicy that restricts egress only", with_change(
        lambda b: b[("NetworkPolicy", "chat")]["spec"].update(policyTypes=["Egress"])))
    expect("a persistence port open to every pod", with_change(
        lambda b: ingress(b, "persistence")[0].pop("from")))
    expect("a persistence port open to every pod of the namespace (empty podSelector)", with_change(
        lambda b: ingress(b, "persistence")[0]["from"].append({"podSelector": {}})))
    expect("a persistence port open to another namespace", with_change(
        lambda b: ingress(b, "persistence")[0]["from"].append({"namespaceSelector": {}})))
    expect("a persistence port open to the telnet gateways", with_change(
        lambda b: roles_of(b, "persistence").append("telnet-gateway")))
    expect("a persistence port closed to the shards", with_change(
        lambda b: roles_of(b, "persistence").remove("shard")))
    expect("a shard cluster port closed to the coordinator's liveness watchdog", with_change(
        lambda b: roles_of(b, "shard").remove("coordinator")))
    expect("a router cluster port open to the telnet gateways", with_change(
        lambda b: roles_of(b, "router", 1).append("telnet-gateway")))
    expect("an asset policy admitting the routers on every port", with_change(
        lambda b: ingress(b, "asset").append({"from": [{"podSelector": {"matchLabels": {NAME_LABEL: "router"}}}]})))
    expect("a router QUIC port open to the telnet gateways only", with_change(
        lambda b: ingress(b, "router")[0].update(
            {"from": [{"podSelector": {"matchLabels": {NAME_LABEL: "telnet-gateway"}}}]})))
    expect("a coordinator metrics port closed to the probes", with_change(
        lambda b: ingress(b, "coordinator")[0].update(
            {"from": [{"podSelector": {"matchLabels": {NAME_LABEL: "coordinator"}}}]})))
    expect("a shard passing --chat that the chat policy does not admit", with_change(
        lambda b: shard_c(b)["args"].append("--chat=chat:7300")))
    expect("a NetworkPolicy not named after its workload", with_change(
        lambda b: b[("NetworkPolicy", "auth")]["metadata"].update(name="accounts")))
    expect("a dashboard querying an unknown metric", dashboard_errors(
        {"panels": [{"title": "tick players cells migrations hand-offs",
                     "targets": [{"expr": "rate(tessera_shard_imaginary_total[1m])"}]}]}, exported))
    expect("an alert querying an unknown metric", alert_errors(
        {"groups": [{"rules": [{"alert": "X", "expr": "tessera_gateway_imaginary > 0",
                                "annotations": {"runbook": "docs/deploy.md#alerts"}}]}]},
        exported, {"alerts"}))
    expect("an alert whose runbook section does not exist", alert_errors(
        {"groups": [{"rules": [{"alert": "X", "expr": "up == 0",
                                "annotations": {"runbook": "docs/deploy.md#no-such-section"}}]}]},
        exported, {"alerts"}))
    if TESSERA_BIN.exists():
        objs = copy.deepcopy(good_objs)
        for o in objs:
            if o["kind"] == "Deployment" and o["metadata"]["name"] == "shard":
                o["spec"]["template"]["spec"]["containers"][0]["args"].append("--drain-timeout=45")
        expect("a shard flag the binary does not have", flag_errors(objs))
    good_dockerfile = (ROOT / "Dockerfile").read_text()
    expect("a Dockerfile whose runtime runs as root", dockerfile_errors(
        good_dockerfile.replace("USER 10001:10001", "USER root")))
    expect("a Dockerfile without a runtime stage", dockerfile_errors(
        good_dockerfile[:good_dockerfile.rindex("\nFROM ")]))
    expect("a Dockerfile with a broken RUN script", dockerfile_errors(
        good_dockerfile.replace("esac;", "esca;", 1)))
    expect("a Dockerfile that does not parse", dockerfile_errors("FROM\n"))
    expect("a Dockerfile without the web client's bundle", dockerfile_errors(
        good_dockerfile.replace(f" {WEB_DIR}\n", " /srv/web\n")))
    return errs


def web_self_tests(good_objs):
    """Each broken browser-players object (tests/browser-players) must be rejected."""
    errs = []

    def expect(label, change):
        objs = copy.deepcopy(good_objs)
        b = {(o["kind"], o["metadata"]["name"]): o for o in objs}
        change(b)
        if not rule_errors(objs, "tests/browser-players", 12.0):
            errs.append(f"{label} was not rejected")

    def router_c(b):
        return pod_spec(b[("Deployment", "router")])["containers"][0]

    def drop_web_cert(b):
        router_c(b).update(args=[a for a in router_c(b)["args"] if not a.startswith(("--web-cert=", "--web-key="))])

    expect("routers serving the page with development certificates", drop_web_cert)
    expect("a router showing browsers a certificate from its data directory", lambda b: router_c(b)["args"].append(
        "--web-cert=/data/quic-cert.pem"))
    expect("a router whose web certificate is another Secret's", lambda b: next(
        v for v in pod_spec(b[("Deployment", "router")])["volumes"] if v["name"] == "web-tls"
    )["secret"].update(secretName=ROUTER_QUIC_SECRET))
    expect("a router whose web certificate is writable", lambda b: next(
        m for m in router_c(b)["volumeMounts"] if m["name"] == "web-tls").pop("readOnly"))
    expect("a router web port closed to the players", lambda b: b[("NetworkPolicy", "router")]["spec"]
           ["ingress"][0]["ports"].pop())
    expect("an Ingress without TLS", lambda b: b[("Ingress", "tessera-web")]["spec"].pop("tls"))
    expect("a Service tessera-web sending to the metrics port", lambda b: b[("Service", "tessera-web")]["spec"]
           ["ports"][0].update(targetPort="metrics"))
    return errs


def main():
    drain_measured = None
    if DRAIN_MEASURED.exists():
        drain_measured = max(json.loads(DRAIN_MEASURED.read_text())["drain_seconds"].values())
        print(f"measured shard drain (tests/cluster_faults.rs): {drain_measured:.1f} s at most")
    else:
        print(f"no {DRAIN_MEASURED.relative_to(ROOT)} (run the rolling-restart test): "
              "checking the grace period against the drain timeout only")
    rendered = {"base": render(K8S / "base")}
    for overlay in OVERLAYS:
        rendered[overlay] = render(K8S / "overlays" / overlay)
    for example in EXAMPLES:
        rendered[example] = render(K8S / example)
    # The example of components/external-etcd: schemas only (it is no overlay).
    rendered["tests/external-etcd"] = render(K8S / "tests" / "external-etcd")
    if any(o["metadata"]["name"].startswith("etcd") for o in rendered["tests/external-etcd"]):
        fail("tests/external-etcd", "components/external-etcd left etcd objects behind")
    for overlay, objs in rendered.items():
        if not objs:
            continue
        for o in objs:
            for e in schema_errors(o):
                fail(f"{overlay} {name_of(o)}", e)
        if overlay in OVERLAYS or overlay in EXAMPLES:
            for e in rule_errors(objs, overlay, drain_measured):
                fail(overlay, e)
        else:
            # No overlay, but rendered all the same: no CA key, own Secrets only,
            # and a NetworkPolicy on every port.
            for e in secret_errors(objs) + network_policy_errors(objs):
                fail(overlay, e)
        if TESSERA_BIN.exists():
            for e in flag_errors(objs):
                fail(overlay, e)
        print(f"{overlay}: {len(objs)} objects rendered and validated (Kubernetes {K8S_VERSION})")
    for e in world_errors():
        fail("world", e)
    exported = exported_metrics()
    dashboard = json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())
    for e in dashboard_errors(dashboard, exported):
        fail("k8s/monitoring/grafana-dashboard.json", e)
    for e in dockerfile_errors((ROOT / "Dockerfile").read_text()):
        fail("Dockerfile", e.removeprefix("Dockerfile: "))
    for e in dockerignore_errors((ROOT / ".dockerignore").read_text()):
        fail(".dockerignore", e)
    alerts = yaml.safe_load((K8S / "monitoring" / "alerts.yaml").read_text())
    anchors = doc_anchors((ROOT / "docs" / "deploy.md").read_text())
    for e in alert_errors(alerts, exported, anchors):
        fail("k8s/monitoring/alerts.yaml", e)
    yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    if rendered["production"]:
        for e in self_tests(rendered["production"], exported):
            fail("self-test", e.removeprefix("self-test: "))
    if rendered["tests/browser-players"]:
        for e in web_self_tests(rendered["tests/browser-players"]):
            fail("self-test", e)
    if not TESSERA_BIN.exists():
        print(f"no {TESSERA_BIN.relative_to(ROOT)}: the flags in the manifests were not checked "
              "against the binary (cargo build --bin tessera first)")
    if failures:
        print("\n".join(["k8s checks FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print("k8s checks passed")


if __name__ == "__main__":
    main()
