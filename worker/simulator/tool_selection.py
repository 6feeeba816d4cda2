"""Decide which function tools a simulated model calls, for chat and Responses requests (pure).

Chat nests a function tool as `{"type": "function", "function": {"name", "parameters"}}`;
Responses flattens it to `{"type": "function", "name", "parameters"}`. Everything after
reading the tools is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.simulator.prompt import ends_with_tool_result

# With parallel tool calls allowed, the simulated model calls at most this many tools at once.
_MAX_PARALLEL_CALLS = 2


@dataclass(frozen=True)
class FunctionSpec:
    """A function tool the model may call."""

    name: str
    parameters: object


def offered_functions(tools: object, flat: bool) -> list[FunctionSpec]:
    """Return the function tools of a `tools` array, in order (other tool types are skipped)."""
    if not isinstance(tools, list):
        return []
    found: list[FunctionSpec] = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        spec: Any = tool if flat else tool.get("function")
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            found.append(FunctionSpec(name=spec["name"], parameters=spec.get("parameters")))
    return found


def named_choice(tool_choice: object, flat: bool) -> str | None:
    """Return the function name a `tool_choice` forces, or None when it forces none."""
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function":
        return None
    holder: Any = tool_choice if flat else tool_choice.get("function")
    name = holder.get("name") if isinstance(holder, dict) else None
    return name if isinstance(name, str) else None


def choose_functions(body: dict[str, Any], conversation: object, flat: bool) -> list[FunctionSpec]:
    """Return the functions the simulated model calls for this request (empty: answer in text)."""
    functions = offered_functions(body.get("tools"), flat)
    tool_choice = body.get("tool_choice", "auto")
    if not functions or tool_choice == "none":
        return []
    named = named_choice(tool_choice, flat)
    if named is not None:
        return [spec for spec in functions if spec.name == named][:1]
    allowed, required = _allowed_tools(tool_choice, flat)
    if allowed is not None:
        functions = [spec for spec in functions if spec.name in allowed]
    forced = required or tool_choice == "required"
    # After tool output comes back, a model with a free choice answers in text; otherwise a
    # client's tool loop would never end.
    if not forced and ends_with_tool_result(conversation):
        return []
    if body.get("parallel_tool_calls") is not False:
        return functions[:_MAX_PARALLEL_CALLS]
    return functions[:1]


def _allowed_tools(tool_choice: object, flat: bool) -> tuple[set[str] | None, bool]:
    """Read an `allowed_tools` choice: (allowed names or None, whether a call is required)."""
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "allowed_tools":
        return None, False
    holder: Any = tool_choice if flat else tool_choice.get("allowed_tools")
    if not isinstance(holder, dict):
        return None, False
    names: set[str] = set()
    for tool in holder.get("tools") or []:
        name = named_choice(tool, flat)
        if name is not None:
            names.add(name)
    return names, holder.get("mode") == "required"
