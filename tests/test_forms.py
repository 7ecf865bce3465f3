"""The run forms of every deployment in prefect.yaml: submitted unchanged they validate; bad values are refused.

The UI builds its form from the deployment's parameter schema (Prefect's ``parameter_schema`` of the flow)
and, on Submit, sends every field: the deployment's parameters, each other field's default, and ``null``
for a field left empty. The server checks those values with jsonschema. No server here: the same schema
and the same checks, in-process.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
EMPTY = object()  # a field the form has no value for


def _flow(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def _schema(entrypoint: str) -> dict[str, Any]:
    return parameter_schema(_flow(entrypoint)).model_dump_for_openapi()


def _resolved(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` (``#/definitions/Name``) merged in."""
    while "$ref" in node:
        target = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def form_values(schema: dict[str, Any], node: dict[str, Any], value: Any = EMPTY) -> Any:
    """What the form submits for ``node``: ``value`` where given, else the field's default, else ``null``;
    an object's every property filled the same way, the given value's keys on top of its default."""
    node = _resolved(schema, node)
    if value is EMPTY:
        value = node.get("default")
    if "properties" in node and (isinstance(value, dict) or value is None and "default" not in node):
        given = value or {}
        return {name: form_values(schema, prop, given.get(name, EMPTY)) for name, prop in node["properties"].items()}
    return value


def _errors(values: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The UI's check (Prefect's preprocessing + jsonschema) and plain Draft 2020-12 jsonschema, together."""
    plain = jsonschema.Draft202012Validator(schema).iter_errors(values)
    return sorted({f"{e.json_path}: {e.message}" for e in [*validate(values, schema), *plain]})


def _nulls(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_nulls(v) for v in value.values())
    return int(value is None)


@pytest.fixture(scope="module", params=DEPLOYMENTS, ids=lambda d: d["entrypoint"].rsplit(":", 1)[-1])
def deployment(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """A deployment of prefect.yaml and its parameter schema."""
    return request.param, _schema(request.param["entrypoint"])


def test_every_flow_of_the_project_has_a_deployment() -> None:
    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS}
    assert entrypoints >= {"flows/build_features.py:build_features", "flows/train_eval.py:train_eval",
                           "flows/demo.py:demo", "flows/tune.py:tune"}
    assert all(d["work_pool"]["name"] == "local-process" for d in DEPLOYMENTS)


def test_form_submitted_unchanged_is_valid(deployment: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, schema = deployment
    values = form_values(schema, schema, spec.get("parameters") or {})
    assert _nulls(values) > 0  # the empty optional fields (out, device, run_dir ...) are sent as null
    assert _errors(values, schema) == []
    # and the flow takes them as they come: a null keeps the field's default
    _flow(spec["entrypoint"]).validate_parameters(values)


def test_deployment_parameters_override_the_defaults() -> None:
    spec = next(d for d in DEPLOYMENTS if d["entrypoint"].endswith(":build_features"))
    schema = _schema(spec["entrypoint"])
    values = form_values(schema, schema, spec["parameters"])
    assert values["extract"]["audio_weights"] == values["extract"]["visual_weights"] == "random"
    assert values["extract"]["pca_weights"] is None and values["extract"]["visual_model"] == "resnet50"
    assert values["manifest"] is None and values["demo_clips"] == 120


@pytest.mark.parametrize(("entrypoint", "change", "field"), [
    ("flows/build_features.py:build_features", {"demo_clips": -5}, "$.demo_clips"),
    ("flows/build_features.py:build_features", {"extract": {"device": "tpu"}}, "$.extract.device"),
    ("flows/build_features.py:build_features", {"segment": {"frame_size": [8, 224]}}, "$.segment.frame_size"),
    ("flows/train_eval.py:train_eval",
     {"config": {"method_configs": {"hscmae": {"loss": {"mask_ratio": 1.0}}}}},
     "$.config.method_configs.hscmae.loss.mask_ratio"),
    ("flows/train_eval.py:train_eval", {"config": {"epochs": 0}}, "$.config.epochs"),
    ("flows/demo.py:demo", {"clips": 5}, "$.clips"),
    ("flows/demo.py:demo", {"epochs": 0}, "$.epochs"),  # TrainConfig's bound, through the experiment's override
    ("flows/tune.py:tune", {"config": {"seeds": []}}, "$.config.seeds"),
])
def test_bad_values_are_refused(entrypoint: str, change: dict[str, Any], field: str) -> None:
    schema = _schema(entrypoint)
    spec = next(d for d in DEPLOYMENTS if d["entrypoint"] == entrypoint)
    values = _merged(form_values(schema, schema, spec.get("parameters") or {}), change)  # one field edited
    errors = _errors(values, schema)
    assert errors and all(e.startswith(field + ":") for e in errors), errors


def _merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change``'s leaves put in place (nested dicts merged, not replaced)."""
    out = dict(base)
    for key, value in change.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) and value else value
    return out


def test_descriptions_show_whole_in_the_form(deployment: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """The form renders descriptions as Markdown: an ``<...>`` outside a code span is taken for a tag and lost."""
    _, schema = deployment
    descriptions: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("description"), str):
                descriptions.append(node["description"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    assert descriptions
    outside_code = [d for d in descriptions if re.search(r"<[A-Za-z]", re.sub(r"`+[^`]*`+", "", d))]
    assert outside_code == []
