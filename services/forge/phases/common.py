"""Steps several phases share: moving an alias (and moving it back), deleting versions."""

from __future__ import annotations

import grpc

from agentforge.model.v1 import request_response_pb2 as mreq
from services.forge.phases.base import PhaseContext

__all__ = ["delete_versions", "move_alias", "restore_alias"]


async def move_alias(ctx: PhaseContext, model: str, alias: str, version_name: str) -> str:
    """Point ``models/{model}@{alias}`` at ``version_name``; the previous target is kept in the
    run's data first, so :func:`restore_alias` can put it back. Returns ``models/m@alias``."""
    model_name = f"models/{model}"
    key = f"previous_alias:{model_name}@{alias}"
    if key not in ctx.data:  # a resumed step must not record its own move as "previous"
        current = await ctx.peers.model.GetModel(mreq.GetModelRequest(name=model_name), timeout=10)
        ctx.data[key] = current.aliases.get(alias, "")
        await ctx.save()
    await ctx.peers.model.SetModelAlias(mreq.SetModelAliasRequest(
        name=model_name, alias=alias, version=version_name.rsplit("/", 1)[1]), timeout=10)
    await ctx.log(f"{model_name}@{alias} → {version_name}")
    return f"{model_name}@{alias}"


async def restore_alias(ctx: PhaseContext, resource: str) -> None:
    model_name, _, alias = resource.partition("@")
    previous = ctx.data.get(f"previous_alias:{resource}", "")
    if previous:
        await ctx.peers.model.SetModelAlias(
            mreq.SetModelAliasRequest(name=model_name, alias=alias, version=previous), timeout=10)
        return
    try:
        await ctx.peers.model.DeleteModelAlias(mreq.DeleteModelAliasRequest(name=model_name, alias=alias), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            raise


async def delete_versions(ctx: PhaseContext, resource: str) -> None:
    """Delete every version in the comma-separated ``resource`` (gone already is fine)."""
    for name in filter(None, resource.split(",")):
        try:
            await ctx.peers.model.DeleteModelVersion(mreq.DeleteModelVersionRequest(name=name), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
