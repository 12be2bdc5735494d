"""Tools a workflow may offer the model: built-ins and workflow-defined ones."""

from workflows.tools.base import Tool
from workflows.tools.builtins import web_search
from workflows.tools.registry import build_tools

__all__ = ["Tool", "build_tools", "web_search"]
