"""Checks of infra/k8s that the validators cannot make.

kubernetes-validate knows the built-in kinds only. The custom resources (KEDA's
ScaledObject and TriggerAuthentication, the Prometheus Operator's PodMonitor) are
checked here against the fields their published CRDs define for what we use (the CRD
files themselves are not vendored: this machine cannot download them), strictly:
an unknown field is an error, as with `--strict`. Then the manifests are checked
against each other: every name one resource points to exists, the scaler never goes
beyond the raw topic's partitions, every probe and scrape port is a named port of the
pods, the embedded configurations name the mounted secret files, and every workload and
the image run with the allocator settings of infra/allocator.env.

usage: check_k8s.py DIR RAW_PARTITIONS
"""

import pathlib
import sys

import yaml

ERRORS = []


def err(msg):
    ERRORS.append(msg)


def strict(obj, allowed, where):
    """Every key of obj must be in allowed (a dict: key -> nested spec, or None)."""
    if not isinstance(obj, dict):
        err(f"{where}: expected a mapping")
        return
    for k, v in obj.items():
        if k not in allowed:
            err(f"{where}: unknown field {k!r}")
        elif isinstance(allowed[k], dict):
            strict(v, allowed[k], f"{where}.{k}")
        elif isinstance(allowed[k], list):
            for i, item in enumerate(v or []):
                strict(item, allowed[k][0], f"{where}.{k}[{i}]")


META = {"name": None, "namespace": None, "labels": None, "annotations": None}
SCALED_OBJECT = {
    "scaleTargetRef": {"apiVersion": None, "kind": None, "name": None, "envSourceContainerName": None},
    "pollingInterval": None, "cooldownPeriod": None, "idleReplicaCount": None,
    "minReplicaCount": None, "maxReplicaCount": None, "fallback": None, "advanced": None,
    "triggers": [{"type": None, "metadata": None, "name": None, "useCachedMetrics": None,
                  "metricType": None, "authenticationRef": {"name": None, "kind": None}}],
}
TRIGGER_AUTH = {
    "secretTargetRef": [{"parameter": None, "name": None, "key": None}],
    "env": None, "hashiCorpVault": None, "podIdentity": None,
}
POD_MONITOR = {
    "selector": {"matchLabels": None, "matchExpressions": None},
    "namespaceSelector": None, "jobLabel": None, "podTargetLabels": None,
    "podMetricsEndpoints": [{"port": None, "path": None, "interval": None, "scheme": None,
                             "scrapeTimeout": None, "relabelings": None}],
}
KAFKA_TRIGGER = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold",
                 "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
                 "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
                 "version", "partitionLimitation", "sasl", "tls"}


def main(directory, raw_partitions):
    docs = []
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            if d and d.get("kind") != "Kustomization":
                docs.append((path.name, d))
    by_kind = {}
    for name, d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        if d.get("metadata", {}).get("namespace") not in (None, "hookstream") or (
            d["kind"] != "Namespace" and d["metadata"].get("namespace") != "hookstream"
        ):
            err(f"{name}: {d['kind']}/{d['metadata']['name']} is not in the hookstream namespace")

    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    pod_ports = {}
    for wname, w in workloads.items():
        pod = w["spec"]["template"]
        for c in pod["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            pod_ports[wname] = (pod["metadata"]["labels"], ports)
            for probe in ("readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port not in ports:
                    err(f"{wname}: {probe} port {port!r} is not a named container port")
        for v in pod["spec"].get("volumes", []):
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                err(f"{wname}: volume {v['name']} names a missing Secret")
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                err(f"{wname}: volume {v['name']} names a missing ConfigMap")

    for oname, o in by_kind.get("ScaledObject", {}).items():
        strict(o["metadata"], META, f"ScaledObject/{oname}.metadata")
        strict(o["spec"], SCALED_OBJECT, f"ScaledObject/{oname}.spec")
        ref = o["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            err(f"ScaledObject/{oname}: target {ref['kind']}/{ref['name']} does not exist")
        if o["spec"]["maxReplicaCount"] > raw_partitions:
            err(f"ScaledObject/{oname}: maxReplicaCount {o['spec']['maxReplicaCount']} > {raw_partitions} partitions")
        for t in o["spec"]["triggers"]:
            unknown = set(t["metadata"]) - KAFKA_TRIGGER if t["type"] == "kafka" else set()
            if unknown:
                err(f"ScaledObject/{oname}: unknown kafka trigger metadata {sorted(unknown)}")
            auth = t.get("authenticationRef", {}).get("name")
            if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                err(f"ScaledObject/{oname}: TriggerAuthentication {auth} does not exist")
    for aname, a in by_kind.get("TriggerAuthentication", {}).items():
        strict(a["spec"], TRIGGER_AUTH, f"TriggerAuthentication/{aname}.spec")
        for r in a["spec"].get("secretTargetRef", []):
            if r["key"] not in secrets.get(r["name"], {}).get("stringData", {}):
                err(f"TriggerAuthentication/{aname}: {r['name']}/{r['key']} does not exist")
    for mname, m in by_kind.get("PodMonitor", {}).items():
        strict(m["metadata"], META, f"PodMonitor/{mname}.metadata")
        strict(m["spec"], POD_MONITOR, f"PodMonitor/{mname}.spec")
        want = m["spec"]["selector"]["matchLabels"]
        selected = [p for labels, p in pod_ports.values() if want.items() <= labels.items()]
        for e in m["spec"]["podMetricsEndpoints"]:
            if not any(e["port"] in ports for ports in selected):
                err(f"PodMonitor/{mname}: no selected pod has a port named {e['port']}")

    allocator = dict(
        line.split("=", 1)
        for line in (pathlib.Path(directory).parent / "allocator.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for wname, w in workloads.items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for k, v in allocator.items():
                if env.get(k) != v:
                    err(f"{wname}/{c['name']}: env {k} is {env.get(k)!r}, infra/allocator.env says {v!r}")
    dockerfile = (pathlib.Path(directory).parent / "docker" / "Dockerfile").read_text()
    for k, v in allocator.items():
        if f"{k}={v}" not in dockerfile:
            err(f"infra/docker/Dockerfile: does not set {k}={v} (infra/allocator.env)")

    for cname, c in configmaps.items():
        for key, text in c.get("data", {}).items():
            for line in text.splitlines():
                if "secrets_file" in line:
                    source = line.split("/")[-1].strip().strip('"')
                    if source not in secrets["hookstream-webhook-secrets"]["stringData"]:
                        err(f"ConfigMap/{cname}: {source} is not a key of hookstream-webhook-secrets")

    for e in ERRORS:
        print(f"error: {e}")
    print(f"{len(docs)} resources checked, {len(ERRORS)} errors")
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
