"""``Chucky.prompt(..., output_format=...)`` against the scripted server: typed answers."""

from __future__ import annotations

import pydantic
import pytest

from chucky import Chucky
from chucky.errors import ValidationError
from chucky.testing import scripted_server


class Answer(pydantic.BaseModel):
    name: str
    count: int = 0


class Shouting(pydantic.BaseModel):
    """Stricter than its JSON Schema: the validator is not in the schema the server checks."""

    name: str

    @pydantic.field_validator("name")
    @classmethod
    def upper(cls, value: str) -> str:
        if value != value.upper():
            raise ValueError("name must be upper case")
        return value


async def test_a_model_class_gives_a_model_instance() -> None:
    async with scripted_server() as server, server.client() as client:
        result = await client.prompt('json {"name": "x", "count": 2}', output_format=Answer)
        assert result.structured_output == Answer(name="x", count=2)
        assert isinstance(result.structured_output, Answer)
        # The mapping and the message keep the wire JSON.
        assert result["structured_output"] == {"name": "x", "count": 2}
        assert result.message.structured_output == {"name": "x", "count": 2}


async def test_a_client_default_output_format_applies() -> None:
    async with scripted_server() as server:
        client = Chucky(server.token(), server.url, output_format=Answer)
        async with client:
            result = await client.prompt('json {"name": "d"}')
            assert result.structured_output == Answer(name="d")


async def test_a_schema_dict_gives_the_json() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    async with scripted_server() as server, server.client() as client:
        result = await client.prompt('json {"a": 1}', output_format=schema)
        assert result.structured_output == {"a": 1}
        wrapped = {"type": "json_schema", "schema": schema}
        result = await client.prompt('json ```json\n{"a": 2}\n```', output_format=wrapped)
        assert result.structured_output == {"a": 2}


async def test_the_server_schema_rejects_a_wrong_shape() -> None:
    async with scripted_server(max_structured_output_retries=0) as server, server.client() as c:
        result = await c.prompt('json {"name": 5}', output_format=Answer)
        assert result.subtype == "error_max_structured_output_retries"
        assert result.is_error
        assert result.structured_output is None
        assert result.errors is not None and "$.name" in result.errors[0]


async def test_a_stricter_model_raises_validation_error() -> None:
    async with scripted_server() as server, server.client() as client:
        with pytest.raises(ValidationError) as caught:
            await client.prompt('json {"name": "quiet"}', output_format=Shouting)
        error = caught.value
        assert "Shouting" in str(error) and "name" in str(error)
        assert error.details["structured_output"] == {"name": "quiet"}
        assert error.details["result"].subtype == "success"
        assert error.session_id is not None
        assert (
            await client.prompt('json {"name": "LOUD"}', output_format=Shouting)
        ).structured_output == Shouting(name="LOUD")
