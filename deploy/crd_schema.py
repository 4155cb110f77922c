"""Cut KubeRay's CRD schemas down to the fields deploy/k8s/*.yaml use.

    python deploy/crd_schema.py KUBERAY_CHECKOUT v1.7.0 > deploy/kuberay-crd-schema.json

reads the RayJob and RayService CustomResourceDefinitions of a KubeRay checkout
(`ray-operator/config/crd/bases/`, about 1 MB each: most of it the Kubernetes pod
spec) and writes, for each kind, the `v1` openAPIV3Schema with only the properties
some manifest in deploy/k8s/ sets, keeping every constraint of those (type,
required, enum, pattern, ...). Objects with listed properties become closed
(`additionalProperties: false`), as `kubectl apply`'s strict field validation
treats them, so tests/test_k8s.py catches a misspelt or misplaced field. Rerun
after adding a field to a manifest, or to move to another KubeRay release.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parent / "k8s"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
# Schema keywords that constrain a value; descriptions, defaults and CEL rules
# (which jsonschema cannot evaluate) are dropped.
CONSTRAINTS = {
    "type", "required", "enum", "format", "pattern", "minimum", "maximum", "minLength", "maxLength",
    "minItems", "maxItems", "anyOf", "oneOf", "allOf", "nullable",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip
KeyPath = tuple[str, ...]


def used_paths(value: Any, prefix: KeyPath = ()) -> set[KeyPath]:
    """Every key path a manifest sets; list items are `[]`."""
    paths = {prefix}
    if isinstance(value, dict):
        for key, item in value.items():
            paths |= used_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for item in value:
            paths |= used_paths(item, (*prefix, "[]"))
    return paths


def constraints(schema: dict) -> dict:
    """`schema` with only the keywords that constrain a value, at every depth."""
    kept = {k: v for k, v in schema.items() if k in CONSTRAINTS}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in kept:
            kept[key] = [constraints(s) for s in kept[key]]
    for key in ("properties", "additionalProperties", "items"):
        value = schema.get(key)
        if isinstance(value, dict):
            kept[key] = {k: constraints(s) for k, s in value.items()} if key == "properties" else constraints(value)
    return kept


def prune(schema: dict, used: set[KeyPath], prefix: KeyPath = ()) -> dict:
    """The part of an openAPIV3Schema that the key paths in `used` reach."""
    if "properties" not in schema and "items" not in schema:
        return constraints(schema)  # a scalar or a map (string -> string, quantity, ...)
    out = {k: v for k, v in schema.items() if k in CONSTRAINTS}
    if "properties" in schema:
        out["properties"] = {
            key: prune(sub, used, (*prefix, key))
            for key, sub in schema["properties"].items() if (*prefix, key) in used
        }  # fmt: skip
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if "items" in schema:
        out["items"] = prune(schema["items"], used, (*prefix, "[]"))
    return out


def v1_schema(crd_file: Path) -> dict:
    crd = yaml.safe_load(crd_file.read_text())
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if "v1" not in versions:
        raise ValueError(f"{crd_file}: no v1 version among {sorted(versions)}")
    return versions["v1"]["schema"]["openAPIV3Schema"]


def cut(kuberay: Path, version: str) -> dict:
    """{"kuberay": version, "schemas": {kind: pruned schema}} for the manifests' kinds."""
    documents = [d for f in sorted(MANIFESTS.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    bases = kuberay / "ray-operator" / "config" / "crd" / "bases"
    schemas = {}
    for kind, name in CRD_FILES.items():
        used = set().union(*(used_paths(d) for d in documents if d.get("kind") == kind))
        if used:
            schemas[kind] = prune(v1_schema(bases / name), used)
    return {"kuberay": version, "source": "ray-operator/config/crd/bases", "schemas": schemas}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python {sys.argv[0]} KUBERAY_CHECKOUT VERSION > deploy/kuberay-crd-schema.json")
    json.dump(cut(Path(sys.argv[1]), sys.argv[2]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
