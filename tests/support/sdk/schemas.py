"""Run with the SDK's Python: print, as JSON, the `schema` strings Dria's SDK sends for test models.

For each pydantic model below: the Ollama/OpenRouter form (base64 of an outlines-core
regex), the OpenAI form (a strict JSON schema string) and the Gemini form, all made
by the SDK's own SchemaParser.
"""

import json
from enum import Enum
from typing import List, Literal, Optional

from dria.utils.schema_parser import SchemaParser
from pydantic import BaseModel, Field, conint, constr


class Person(BaseModel):
    name: str
    age: int


class Color(str, Enum):
    red = "red"
    blue = "blue"


class Review(BaseModel):
    title: str = Field(max_length=40)
    score: float
    recommended: bool
    tags: List[str]
    color: Color
    kind: Literal["a", 'b"c']
    nick: Optional[str] = None
    code: constr(pattern=r"^[A-Z]{2}\.\d+$")
    stars: conint(ge=0, le=5)
    friends: List[Person]


class Dialogue(BaseModel):
    instruction: str = Field(max_length=200)
    responses: List[str] = Field(max_length=3)


MODELS = {"Person": Person, "Review": Review, "Dialogue": Dialogue}

print(
    json.dumps(
        {
            name: {provider: SchemaParser.parse(model, provider) for provider in ("ollama", "openai", "gemini")}
            for name, model in MODELS.items()
        },
        indent=1,
        sort_keys=True,
    )
)
