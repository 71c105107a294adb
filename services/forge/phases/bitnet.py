"""BitNet: 1.58-bit (ternary, absmean) compression of a model version with a short QAT.

Steps:

====================== ============================================= ===========================
step                   does                                          compensation
====================== ============================================= ===========================
load_source            the source: this pipeline run's EvoMerge       —
                       child, else ``source`` (default the
                       ``winner`` of ``models/evomerge``); weights
                       downloaded (sha256 checked)
quantize               every Linear in the blocks becomes a BitLinear —
                       (:mod:`services.forge.bitnet`); ``qat_steps``
                       of AdamW through the straight-through
                       estimator on held-out-generator text; the
                       validation loss of the source, after plain
                       quantization and after the fine-tune
register_model_version the packed model (1.6 bits per ternary weight) delete the version
                       as a version of ``model``: size, bits per
                       weight, validation loss vs the source's
set_winner_alias       ``models/{model}@{alias}`` → it                 alias back to its old target
====================== ============================================= ===========================
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import torch
from google.rpc import code_pb2

from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as mreq
from services.forge import bitnet as b158
from services.forge.modelio import (build_decoder, download_weights, heldout_task, load_state, register_weights,
                                    state_dict_bytes, tokenizer_of, validation_loss)
from services.forge.phases.base import P, ParamSpec, Peers, Phase, PhaseContext, Step, StepFailedError
from services.forge.phases.common import delete_versions, move_alias, restore_alias
from services.shared.errors import FailedPrecondition, InvalidArgument, Unavailable

__all__ = ["BitNet"]


class BitNet(Phase):
    id = "bitnet"
    display_name = "BitNet"
    description = ("BitNet b1.58 compression: ternary absmean weights and 8-bit activations in every block "
                   "Linear, a short quantization-aware fine-tune (straight-through estimator), registered "
                   "with its size, bits per weight and validation loss against the source version's.")
    prerequisites = ("evomerge",)
    parameters = (
        ParamSpec("source", P.PARAMETER_TYPE_STRING,
                  "Version to compress, `models/{model}/versions/{version or alias}` (or the request's "
                  "`input_model_version`).",
                  "models/evomerge/versions/winner"),
        ParamSpec("qat_steps", P.PARAMETER_TYPE_INTEGER, "Quantization-aware fine-tune steps (0 = none).", 100, 0,
                  100_000),
        ParamSpec("batch_size", P.PARAMETER_TYPE_INTEGER, "Sequences per fine-tune step.", 16, 1, 4096),
        ParamSpec("learning_rate", P.PARAMETER_TYPE_NUMBER, "AdamW learning rate of the fine-tune.", 1e-3, 1e-7,
                  1.0),
        ParamSpec("activation_bits", P.PARAMETER_TYPE_INTEGER, "Activation bits (absmax per token); 0 = none.", 8,
                  0, 16),
        ParamSpec("seed", P.PARAMETER_TYPE_INTEGER, "Seed of the fine-tune's batches.", 0, 0, 2**31 - 1),
        ParamSpec("dataset_path", P.PARAMETER_TYPE_STRING,
                  "Text for the fine-tune and validation (.txt/.jsonl on the forge host); empty = built-in "
                  "word problems (the held-out generator seed EvoMerge scores with).", ""),
        ParamSpec("model", P.PARAMETER_TYPE_STRING, "Registry model id of the result.", "bitnet"),
        ParamSpec("alias", P.PARAMETER_TYPE_STRING, "Alias moved to the result.", "winner"),
    )
    outputs = (("model_version", "The compressed model.", "agentforge.dev/ModelVersion", "winner"),)

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        parts = params["source"].split("/")
        if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions" or not parts[3]:
            return [("parameters.source", "must be models/{model}/versions/{version or alias}")]
        return []

    async def precheck(self, params: dict[str, dict[str, Any]], peers: Peers) -> None:
        if "evomerge" in params:
            return
        await self._source(params[self.id]["source"], peers)

    @staticmethod
    async def _source(name: str, peers: Peers) -> mv.ModelVersion:
        import grpc

        try:
            version = await peers.model.GetModelVersion(mreq.GetModelVersionRequest(name=name), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable("the model service is unavailable") from None
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise FailedPrecondition(
                    f"bitnet compresses {name}, which does not exist; run phases/evomerge first or pass "
                    f"parameters.source", reason="PREREQUISITE_MISSING", metadata={"source": name}) from None
            raise
        if version.state != mv.MODEL_VERSION_STATE_READY:
            raise FailedPrecondition(f"{version.name} is {mv.ModelVersionState.Name(version.state)}, not READY",
                                     reason="PREREQUISITE_MISSING")
        if version.parameters.get("task.kind") != "cognate" or "model.width" not in version.parameters:
            raise InvalidArgument("not a Cognate language model", violations=[
                ("parameters.source", f"{version.name} is not a decoder language model this phase can compress")])
        return version

    def steps(self) -> tuple[Step, ...]:
        return (
            Step("load_source", 0.05, self.load_source),
            Step("quantize", 0.85, self.quantize),
            Step("register_model_version", 0.07, self.register, delete_versions),
            Step("set_winner_alias", 0.03, self.set_winner, restore_alias),
        )

    async def load_source(self, ctx: PhaseContext) -> str:
        upstream = ctx.output("evomerge")
        name = upstream["version"] if upstream is not None else ctx.params["source"]
        try:
            version = await self._source(name, ctx.peers)
        except (InvalidArgument, FailedPrecondition) as exc:
            raise StepFailedError(code_pb2.FAILED_PRECONDITION, str(exc)) from None
        resolved, _ = await download_weights(ctx.peers.model, version.name, ctx.scratch() / "source.pth")
        ctx.data["bitnet.source"] = resolved
        ctx.data["bitnet.source_params"] = dict(version.parameters)
        ctx.data["bitnet.source_size_bytes"] = version.artifact.size_bytes
        await ctx.save()
        await ctx.log(f"source {resolved} ({version.artifact.size_bytes} bytes)")
        return resolved

    async def quantize(self, ctx: PhaseContext) -> str:
        loop = asyncio.get_running_loop()

        def report(fraction: float, message: str) -> None:
            asyncio.run_coroutine_threadsafe(ctx.progress(fraction, message), loop).result()

        stats = await asyncio.to_thread(self._quantize_blocking, ctx, report)
        ctx.data["bitnet.stats"] = stats
        await ctx.save()
        await ctx.log(f"val_loss {stats['val_loss']:.4f} (source {stats['source_val_loss']:.4f}, "
                      f"quantized before the fine-tune {stats['ptq_val_loss']:.4f})")
        return f"{stats['bits_per_weight']:.2f} bits/weight"

    def _quantize_blocking(self, ctx: PhaseContext, report) -> dict[str, float]:
        p = ctx.params
        torch.set_num_threads(max(1, ctx.peers.config.torch_threads))
        params = ctx.data["bitnet.source_params"]
        state = load_state(ctx.scratch() / "source.pth")
        task = heldout_task(int(params["model.context_length"]), p["dataset_path"], tokenizer=tokenizer_of(params))
        model = build_decoder(state, params)
        source_loss = validation_loss(model, task)
        b158.convert_to_bitnet(model, p["activation_bits"])
        ptq_loss = validation_loss(model, task)
        report(0.05, f"source val_loss {source_loss:.4f}; ternary before the fine-tune {ptq_loss:.4f}")
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=p["learning_rate"], weight_decay=0.0)
        gen = torch.Generator().manual_seed(p["seed"])
        n = task.num_train_examples
        last = time.monotonic()
        for step in range(p["qat_steps"]):
            if ctx.stop.is_set():
                raise StepFailedError(code_pb2.CANCELLED, "cancelled")
            idx = torch.randint(0, n, (p["batch_size"],), generator=gen)
            x, y = task.train_batch(idx)
            loss = task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if time.monotonic() - last > 0.5 or step + 1 == p["qat_steps"]:
                last = time.monotonic()
                report(0.05 + 0.9 * (step + 1) / p["qat_steps"],
                       f"QAT step {step + 1}/{p['qat_steps']} loss {loss.item():.4f}")
        val_loss = validation_loss(model, task)
        if not math.isfinite(val_loss):
            raise StepFailedError(code_pb2.ABORTED, "the fine-tuned ternary model's validation loss is not finite")
        packed, stats = b158.bitnet_state_dict(model)
        data = state_dict_bytes(packed)
        (ctx.scratch() / "bitnet.pth").write_bytes(data)
        return {"source_val_loss": source_loss, "ptq_val_loss": ptq_loss, "val_loss": val_loss,
                "loss_ratio": val_loss / source_loss, "size_bytes": float(len(data)),
                "bits_per_weight": stats["bits_per_weight"], "quantized_weights": stats["quantized_weights"],
                "full_precision_parameters": stats["full_precision_parameters"]}

    async def register(self, ctx: PhaseContext) -> str:
        stats = ctx.data["bitnet.stats"]
        source = ctx.data["bitnet.source"]
        source_size = float(ctx.data["bitnet.source_size_bytes"] or 0)
        data = (ctx.scratch() / "bitnet.pth").read_bytes()
        metrics = {**stats, "source_size_bytes": source_size,
                   "size_ratio": stats["size_bytes"] / source_size if source_size else 0.0,
                   "weight_bits": math.log2(3)}
        params = {k: v for k, v in ctx.data["bitnet.source_params"].items() if k.startswith(("model.", "task."))}
        params.update({"architecture": "bitnet_decoder_transformer", "quantization": "bitnet-b1.58-absmean",
                       "quantization.activation_bits": str(ctx.params["activation_bits"]),
                       "quantization.packing": "base3-5-per-byte", "qat.steps": str(ctx.params["qat_steps"]),
                       "qat.learning_rate": repr(ctx.params["learning_rate"])})
        version = mv.ModelVersion(
            description=f"BitNet b1.58 of {source}: ternary block weights, {stats['bits_per_weight']:.2f} bits each",
            tags=["bitnet", "ternary"], metrics=metrics, parameters=params,
            lineage=mv.Lineage(parent_versions=[source], phase="phases/bitnet", phase_run=ctx.run.name))
        created = await register_weights(ctx.peers.model, f"models/{ctx.params['model']}", version, data,
                                         ctx.request_id("version"))
        ctx.data["bitnet.version"] = created.name
        await ctx.save()
        for key in ("val_loss", "source_val_loss", "loss_ratio", "size_bytes", "bits_per_weight"):
            ctx.run.outputs.metrics[ctx.metric_key(key)] = float(metrics[key])
        ctx.run.outputs.metrics[ctx.metric_key("size_ratio")] = metrics["size_ratio"]
        await ctx.log(f"registered {created.name}: {int(stats['size_bytes'])} bytes "
                      f"({metrics['size_ratio']:.2f}x the source), val_loss {stats['val_loss']:.4f} "
                      f"({stats['loss_ratio']:.3f}x the source's)")
        return created.name

    async def set_winner(self, ctx: PhaseContext) -> str:
        version = ctx.data["bitnet.version"]
        resource = await move_alias(ctx, ctx.params["model"], ctx.params["alias"], version)
        ctx.run.outputs.model_version = version
        ctx.run.outputs.artifacts[ctx.artifact_key("winner")] = version
        await ctx.set_output({"version": version, **ctx.data["bitnet.stats"]})
        return resource
