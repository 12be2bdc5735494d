"""Publisher-side builders of common workflows."""

from __future__ import annotations

from typing import Any


class Simple:
    """One generation from a prompt: the shape of protocol/examples/simple.json."""

    def workflow(self, prompt: str, max_tokens: int = 250) -> dict[str, Any]:
        """The workflow JSON (as a dict) answering `prompt`."""
        return {
            "config": {
                "max_steps": 50,
                "max_time": 200,
                "tools": ["ALL"],
                "custom_tools": None,
                "max_tokens": max_tokens,
            },
            "external_memory": {},
            "tasks": [
                {
                    "id": "0",
                    "name": "Task",
                    "description": "Task Description",
                    "messages": [{"role": "user", "content": prompt}],
                    "inputs": [],
                    "operator": "generation",
                    "schema": None,
                    "outputs": [{"type": "write", "key": "response", "value": "__result"}],
                },
                {
                    "id": "_end",
                    "name": "Task",
                    "description": "Task Description",
                    "messages": [{"role": "user", "content": ""}],
                    "inputs": [],
                    "operator": "end",
                    "outputs": [],
                },
            ],
            "steps": [{"source": "0", "target": "_end", "condition": None, "fallback": None}],
            "return_value": {
                "input": {"type": "read", "key": "response", "index": None, "search_query": None},
                "to_json": False,
                "post_process": None,
            },
        }

    def parse_result(self, result: object) -> str:
        """The answer text from the workflow's result (a string, or a client result whose str() is the text)."""
        return str(result).strip()
