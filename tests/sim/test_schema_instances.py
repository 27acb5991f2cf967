"""Structured outputs: the instance built for a schema validates against it."""

from __future__ import annotations

from typing import Literal

import jsonschema
import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.schema_instances import Draws, instance_for_schema


class Address(pydantic.BaseModel):
    street: str
    zip_code: str = pydantic.Field(min_length=5, max_length=5)


class Person(pydantic.BaseModel):
    """The shape callers send most: pydantic's `model_json_schema()`, with `$defs` and nullable fields."""

    name: str
    age: int = pydantic.Field(ge=18, le=99)
    score: float = pydantic.Field(gt=0, lt=1)
    role: Literal["student", "staff", "faculty"]
    nickname: str | None = None
    addresses: list[Address] = pydantic.Field(min_length=1, max_length=3)
    birthday: str = pydantic.Field(json_schema_extra={"format": "date"})


def test_pydantic_model_schema_with_refs_bounds_and_nullables_gets_a_valid_instance():
    schema = Person.model_json_schema()
    for seed in range(20):
        instance = instance_for_schema(schema, Draws(str(seed)))
        jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())
        Person.model_validate(instance)


class Node(pydantic.BaseModel):
    label: str
    children: list[Node] = []
    parent: Node | None = None


def test_recursive_schemas_end_with_only_what_is_required():
    schema = Node.model_json_schema()
    for seed in range(10):
        Node.model_validate(instance_for_schema(schema, Draws(str(seed))))


def test_same_seed_gives_the_same_instance_and_another_seed_usually_differs():
    schema = Person.model_json_schema()
    assert instance_for_schema(schema, Draws("a")) == instance_for_schema(schema, Draws("a"))
    assert len({str(instance_for_schema(schema, Draws(str(s)))) for s in range(10)}) > 1


def test_all_of_any_of_const_and_type_lists_are_honoured():
    schema = {
        "allOf": [
            {"type": "object", "properties": {"kind": {"const": "point"}}, "required": ["kind"]},
            {
                "properties": {
                    "x": {"type": ["integer", "null"], "multipleOf": 5, "minimum": 3, "maximum": 40}
                }
            },
        ],
        "properties": {"label": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]}},
        "required": ["x", "label"],
    }
    instance = instance_for_schema(schema, Draws("x"))
    jsonschema.validate(instance, schema)
    assert instance["kind"] == "point" and instance["x"] % 5 == 0


leaf_schemas = st.one_of(
    st.just({"type": "string"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-1000, 1000),
        st.integers(0, 50),
    ),
    st.builds(
        lambda lo, span: {"type": "number", "exclusiveMinimum": lo, "maximum": lo + span},
        st.floats(-100, 100),
        st.floats(0.01, 10),
    ),
    st.builds(
        lambda n, m: {"type": "string", "minLength": n, "maxLength": n + m},
        st.integers(0, 30),
        st.integers(0, 10),
    ),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    ),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: st.one_of(
        st.builds(
            lambda items, low: {"type": "array", "items": items, "minItems": low, "maxItems": low + 2},
            inner,
            st.integers(0, 3),
        ),
        st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4).flatmap(
            lambda props: st.builds(
                lambda required: {"type": "object", "properties": props, "required": sorted(required)},
                st.sets(st.sampled_from(sorted(props)) if props else st.nothing()),
            )
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(schemas, st.text(max_size=8))
def test_generated_schemas_always_get_a_valid_instance(schema, seed):
    jsonschema.validate(instance_for_schema(schema, Draws(seed)), schema)
