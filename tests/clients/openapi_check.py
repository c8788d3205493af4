"""Check real exchanges with submitd's HTTP API against docs/openapi.yaml.

Usage: openapi_check.py SPEC EXCHANGES.json

The spec must be valid OpenAPI (openapi-spec-validator); every exchange must hit a documented
path and method, answer a documented status with a documented content type, and its JSON body
must match the documented schema (JSON Schema 2020-12, as OpenAPI 3.1 uses); a documented
required response header must be there; the JSON request body of an accepted request must match
the request schema. Every operation of the spec must be exercised at least once.
"""
import json
import re
import sys

import jsonschema
import yaml
from openapi_spec_validator import validate

spec = yaml.safe_load(open(sys.argv[1]))
validate(spec)
exchanges = json.load(open(sys.argv[2]))
METHODS = {"get", "put", "post", "delete", "patch"}


def deref(node):
    while isinstance(node, dict) and "$ref" in node and len(node) == 1:
        ptr = node["$ref"].lstrip("#/").split("/")
        node = spec
        for p in ptr:
            node = node[p]
    return node


def check_schema(schema, value, where):
    root = dict(schema)
    root["components"] = spec["components"]
    try:
        jsonschema.Draft202012Validator(root).validate(value)
    except jsonschema.ValidationError as e:
        sys.exit(f"{where}: {e.message} at {list(e.absolute_path)}\n{json.dumps(value)}")


routes = []
for template, item in spec["paths"].items():
    pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
    for method in METHODS & set(item):
        routes.append((re.compile(pattern), method, template, item[method]))

covered = set()
for x in exchanges:
    where = f"{x['method']} {x['path']} -> {x['status']}"
    found = [r for r in routes if r[0].match(x["path"]) and r[1] == x["method"].lower()]
    if not found:
        sys.exit(f"{where}: not in the spec")
    _, method, template, op = found[0]
    covered.add((template, method))
    responses = op["responses"]
    response = responses.get(str(x["status"])) or responses.get("default")
    if response is None:
        sys.exit(f"{where}: status not documented")
    response = deref(response)
    for name, header in response.get("headers", {}).items():
        if deref(header).get("required") and name.lower() not in x["headers"]:
            sys.exit(f"{where}: required header {name} missing")
    content = response.get("content")
    if not content:
        if x["body"] not in (None, ""):
            sys.exit(f"{where}: undocumented body {x['body']!r}")
    else:
        ctype = (x["content_type"] or "").split(";")[0].strip()
        if ctype not in content:
            sys.exit(f"{where}: content type {ctype!r} not in {list(content)}")
        check_schema(content[ctype]["schema"], x["body"], where)
    if 200 <= x["status"] < 300 and x.get("request_json") is not None:
        body = deref(op["requestBody"])["content"]["application/json"]["schema"]
        check_schema(body, x["request_json"], where + " (request)")

missing = {(t, m) for _, m, t, _ in routes} - covered
if missing:
    sys.exit(f"operations never exercised: {sorted(missing)}")
print(f"openapi: {len(exchanges)} exchanges match docs/openapi.yaml")
