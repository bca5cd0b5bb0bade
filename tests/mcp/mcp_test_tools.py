"""Tools the MCP tests' pipeline files import (the tests put this folder on PYTHONPATH)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from rxagent.tools import tool


class OrderArgs(BaseModel):
    """Arguments of place_order."""

    symbol: str = Field(min_length=1, description="ticker symbol")
    qty: int = Field(gt=0, description="how many shares")


@tool(args_model=OrderArgs)
async def place_order(args: OrderArgs) -> dict[str, object]:
    """Place a (pretend) order."""
    return {"placed": args.symbol, "qty": args.qty}


def explode(reason: str) -> str:
    """Fail on purpose: a failing tool is a tool error, not a crash."""
    raise RuntimeError(f"exploded: {reason}")
