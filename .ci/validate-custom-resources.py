#!/usr/bin/env python3
"""Validates custom resources in rendered manifests against the schemas in
k8s/schemas/, strictly: kubernetes-validate knows only built-in kinds, and
for any other it warns and passes, so a Certificate without an issuerRef
would go through unchecked.

Each schema file is named <group>-<version>-<kind>.json and holds a CRD's
openAPIV3Schema. As `kubernetes-validate --strict` does for built-in kinds,
an object may carry only the properties its schema lists. A document of an
API group that is not Kubernetes' own and has no schema here is an error.
"""

import json
import pathlib
import sys

import jsonschema
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "k8s" / "schemas"


def strict(schema):
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def load_schemas():
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        group, version, kind = path.stem.rsplit("-", 2)
        schema = strict(json.loads(path.read_text()))
        schema.pop("$comment", None)
        schemas[(f"{group}/{version}", kind.lower())] = jsonschema.Draft7Validator(schema)
    return schemas


def builtin(api_version):
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def main(files):
    schemas = load_schemas()
    errors = 0
    for name in files:
        for doc in yaml.safe_load_all(pathlib.Path(name).read_text()):
            if not doc:
                continue
            api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            what = f"{name}: {kind} {doc.get('metadata', {}).get('name', '?')}"
            validator = schemas.get((api, kind.lower()))
            if validator is None:
                if not builtin(api):
                    print(f"{what}: no schema for {api} {kind} in {SCHEMAS}")
                    errors += 1
                continue
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                print(f"{what}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
                errors += 1
    if errors:
        print(f"{errors} error(s) in custom resources")
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
