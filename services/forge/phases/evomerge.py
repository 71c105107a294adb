"""EvoMerge: evolve merge recipes of the Cognate models and register the best child.

Steps:

====================== ============================================= ===========================
step                   does                                          compensation
====================== ============================================= ===========================
select_parents         the parents: the Cognate output of this        —
                       pipeline run, else ``parents``, else the
                       newest ``parent_count`` READY versions of
                       ``source_model``; same architecture; weights
                       downloaded (sha256 checked)
evolve                 ``generations`` of ``population`` recipes:     —
                       each merges the parents (linear, SLERP, TIES
                       or DARE with its own weights / t / density /
                       drop rate / λ) and is scored by validation
                       loss on held-out text; elitism, tournament
                       selection, crossover, mutation. Progress per
                       generation (best and mean loss); a restart
                       resumes after the last finished generation
register_model_version the best child as a version of ``model``: all  delete the version
                       parents in its lineage, the method as
                       ``merge_method``, the recipe in its parameters
set_winner_alias       ``models/{model}@{alias}`` → the child          alias back to its old target
====================== ============================================= ===========================

TIES and DARE merge task vectors against a base. Models trained from one seed share their
initialisation, which is the base then (rebuilt from the seed, as the training engine
builds it); otherwise the base is the parents' mean (recorded as ``merge.base``).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
from typing import Any

import grpc
import torch
from google.rpc import code_pb2

from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as mreq
from services.forge import merge
from services.forge.modelio import (architecture, build_decoder, download_weights, heldout_task, load_state,
                                    register_weights, state_dict_bytes, tokenizer_of, validation_loss)
from services.forge.phases.base import P, ParamSpec, Peers, Phase, PhaseContext, Step, StepFailedError
from services.forge.phases.common import delete_versions, move_alias, restore_alias
from services.shared.errors import FailedPrecondition, InvalidArgument, Unavailable

__all__ = ["EvoMerge", "apply_recipe", "random_recipe"]

METHODS = ("linear", "slerp", "ties", "dare")


def random_recipe(rng: random.Random, method: str, n: int) -> dict[str, Any]:
    w = [rng.gammavariate(1.0, 1.0) for _ in range(n)]
    return {"method": method, "weights": [x / sum(w) for x in w], "t": [rng.random() for _ in range(n - 1)],
            "density": rng.uniform(0.2, 1.0), "drop": rng.uniform(0.1, 0.7), "lamb": rng.uniform(0.6, 1.4),
            "dare_seed": rng.randrange(2**31)}


def _mutate(rng: random.Random, r: dict[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
    r = json.loads(json.dumps(r))
    if rng.random() < 0.2:
        r["method"] = rng.choice(methods)
    w = [max(1e-3, x * math.exp(rng.gauss(0, 0.3))) for x in r["weights"]]
    r["weights"] = [x / sum(w) for x in w]
    r["t"] = [min(1.0, max(0.0, t + rng.gauss(0, 0.15))) for t in r["t"]]
    r["density"] = min(1.0, max(0.05, r["density"] + rng.gauss(0, 0.1)))
    r["drop"] = min(0.9, max(0.0, r["drop"] + rng.gauss(0, 0.1)))
    r["lamb"] = min(2.0, max(0.1, r["lamb"] + rng.gauss(0, 0.1)))
    r["dare_seed"] = rng.randrange(2**31)
    return r


def _crossover(rng: random.Random, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    child = {k: (a[k] if rng.random() < 0.5 else b[k]) for k in a}
    s = sum(child["weights"])
    child["weights"] = [x / s for x in child["weights"]]
    return child


def apply_recipe(parents: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor],
                 recipe: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The child a recipe makes (deterministic: DARE draws from ``recipe['dare_seed']``)."""
    method = recipe["method"]
    if method == "linear":
        return merge.merge_state_dicts(parents, lambda k, ts: merge.linear(ts, recipe["weights"]))
    if method == "slerp":
        child = parents[0]
        for other, t in zip(parents[1:], recipe["t"]):
            child = merge.merge_state_dicts([child, other], lambda k, ts, t=t: merge.slerp(ts[0], ts[1], t))
        return child
    if method == "ties":
        return merge.merge_state_dicts([base, *parents], lambda k, ts: merge.ties(
            ts[0], ts[1:], density=recipe["density"], lamb=recipe["lamb"]))
    if method == "dare":
        gen = torch.Generator().manual_seed(int(recipe["dare_seed"]))
        return merge.merge_state_dicts([base, *parents], lambda k, ts: merge.dare(
            ts[0], ts[1:], recipe["weights"], p=recipe["drop"], lamb=recipe["lamb"], generator=gen))
    raise merge.MergeError(f"unknown merge method {method!r}")


def describe(recipe: dict[str, Any]) -> str:
    m = recipe["method"]
    w = "/".join(f"{x:.2f}" for x in recipe["weights"])
    if m == "linear":
        return f"linear w={w}"
    if m == "slerp":
        return "slerp t=" + "/".join(f"{t:.2f}" for t in recipe["t"])
    if m == "ties":
        return f"ties density={recipe['density']:.2f} λ={recipe['lamb']:.2f}"
    return f"dare p={recipe['drop']:.2f} λ={recipe['lamb']:.2f} w={w}"


async def _version(peers: Peers, name: str) -> mv.ModelVersion | None:
    try:
        return await peers.model.GetModelVersion(mreq.GetModelVersionRequest(name=name), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise Unavailable("the model service is unavailable") from None
        raise


def _mismatch(a: mv.ModelVersion, b: mv.ModelVersion) -> str:
    pa, pb = architecture(a), architecture(b)
    diff = [f"{k} {pb[k] or '(unset)'} vs {pa[k] or '(unset)'}" for k in pa if pa[k] != pb[k]]
    return ", ".join(diff)


class EvoMerge(Phase):
    id = "evomerge"
    display_name = "EvoMerge"
    description = ("Evolve merge recipes (linear, SLERP, TIES, DARE) over three Cognate models, score every "
                   "child on held-out text, register the best with all its parents in its lineage and move "
                   "the `winner` alias.")
    prerequisites = ("cognate",)
    parameters = (
        ParamSpec("parents", P.PARAMETER_TYPE_LIST,
                  "Parent versions `models/{model}/versions/{version}`; empty = the newest `parent_count` READY "
                  "versions of `source_model`.", []),
        ParamSpec("source_model", P.PARAMETER_TYPE_STRING, "Model whose versions are the parents.", "cognate"),
        ParamSpec("parent_count", P.PARAMETER_TYPE_INTEGER, "Parents to merge.", 3, 2, 8),
        ParamSpec("population", P.PARAMETER_TYPE_INTEGER, "Recipes per generation.", 8, 2, 64),
        ParamSpec("generations", P.PARAMETER_TYPE_INTEGER, "Generations.", 3, 1, 50),
        ParamSpec("elite", P.PARAMETER_TYPE_INTEGER, "Best recipes kept unchanged each generation.", 2, 0, 16),
        ParamSpec("methods", P.PARAMETER_TYPE_LIST, "Merge methods to draw from.", list(METHODS)),
        ParamSpec("seed", P.PARAMETER_TYPE_INTEGER, "Seed of the evolution.", 0, 0, 2**31 - 1),
        ParamSpec("dataset_path", P.PARAMETER_TYPE_STRING,
                  "Held-out text (.txt/.jsonl on the forge host); empty = built-in word problems none of the "
                  "Cognate models saw.", ""),
        ParamSpec("model", P.PARAMETER_TYPE_STRING, "Registry model id of the child.", "evomerge"),
        ParamSpec("alias", P.PARAMETER_TYPE_STRING, "Alias moved to the child.", "winner"),
    )
    outputs = (("model_version", "The best merged child.", "agentforge.dev/ModelVersion", "winner"),)

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        v = []
        bad = [m for m in params["methods"] if m not in METHODS]
        if bad or not params["methods"]:
            v.append(("parameters.methods", f"must be a non-empty list of {', '.join(METHODS)}"))
        if params["elite"] >= params["population"]:
            v.append(("parameters.elite", "must be below parameters.population"))
        for i, name in enumerate(params["parents"]):
            parts = name.split("/") if isinstance(name, str) else []
            if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions" or not parts[3].isdigit():
                v.append((f"parameters.parents[{i}]", "must be a version name models/{model}/versions/{n}"))
        if params["parents"]:
            if len(params["parents"]) < 2:
                v.append(("parameters.parents", "needs at least 2 versions"))
            params["parent_count"] = len(params["parents"])  # explicit parents decide the count
        if len(set(params["parents"])) != len(params["parents"]):
            v.append(("parameters.parents", "must not repeat a version"))
        return v

    async def precheck(self, params: dict[str, dict[str, Any]], peers: Peers) -> None:
        if "cognate" in params:  # in a pipeline the parents are the Cognate step's output
            return
        await self._parents(params[self.id], peers)

    async def _parents(self, p: dict[str, Any], peers: Peers) -> list[mv.ModelVersion]:
        """The parent versions, checked: READY, one architecture, a Cognate (byte LM) model."""
        if p["parents"]:
            versions = []
            for i, name in enumerate(p["parents"]):
                version = await _version(peers, name)
                if version is None:
                    raise InvalidArgument("parent version not found",
                                          violations=[(f"parameters.parents[{i}]", f"{name} does not exist")])
                if version.state != mv.MODEL_VERSION_STATE_READY:
                    raise InvalidArgument("parent version not READY", violations=[
                        (f"parameters.parents[{i}]", f"{name} is {mv.ModelVersionState.Name(version.state)}")])
                versions.append(version)
            for i, version in enumerate(versions):
                if version.parameters.get("task.kind") != "cognate":
                    raise InvalidArgument("parent is not a language model", violations=[
                        (f"parameters.parents[{i}]", f"{version.name} is a "
                         f"{version.parameters.get('task.kind') or 'model of unknown task'}, not a Cognate model")])
                diff = _mismatch(versions[0], version)
                if diff:
                    raise InvalidArgument("parents of different architectures cannot be merged", violations=[
                        (f"parameters.parents[{i}]", f"{version.name} differs from {versions[0].name}: {diff}")])
            return versions
        parent = f"models/{p['source_model']}"
        try:
            page = await peers.model.ListModelVersions(
                mreq.ListModelVersionsRequest(parent=parent, page_size=1000), timeout=10)
            listed = list(page.model_versions)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable("the model service is unavailable") from None
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            listed = []
        ready = [v for v in listed if v.state == mv.MODEL_VERSION_STATE_READY]
        ready.sort(key=lambda v: int(v.name.rsplit("/", 1)[1]), reverse=True)
        need = p["parent_count"]
        if len(ready) < need:
            have = ", ".join(v.name for v in ready) or "none"
            raise FailedPrecondition(
                f"evomerge needs {need} READY versions of {parent} to merge; it has {len(ready)} ({have}). "
                f"Run phases/cognate first (it trains {need} by default) or pass parameters.parents.",
                reason="PREREQUISITE_MISSING", metadata={"model": parent, "needed": str(need), "found": str(len(ready))})
        versions = ready[:need]
        for version in versions[1:]:
            diff = _mismatch(versions[0], version)
            if diff:
                raise FailedPrecondition(
                    f"the newest {need} versions of {parent} have different architectures ({version.name} vs "
                    f"{versions[0].name}: {diff}); pass parameters.parents of one architecture",
                    reason="ARCHITECTURE_MISMATCH")
        if versions[0].parameters.get("task.kind") != "cognate":
            raise FailedPrecondition(f"{versions[0].name} is not a Cognate language model", reason="ARCHITECTURE_MISMATCH")
        return versions

    def steps(self) -> tuple[Step, ...]:
        return (
            Step("select_parents", 0.05, self.select_parents),
            Step("evolve", 0.85, self.evolve),
            Step("register_model_version", 0.07, self.register, delete_versions),
            Step("set_winner_alias", 0.03, self.set_winner, restore_alias),
        )

    async def select_parents(self, ctx: PhaseContext) -> str:
        upstream = ctx.output("cognate")
        if upstream is not None:
            params = dict(ctx.params, parents=upstream["versions"], parent_count=len(upstream["versions"]))
        else:
            params = ctx.params
        try:
            versions = await self._parents(params, ctx.peers)
        except (InvalidArgument, FailedPrecondition) as exc:
            raise StepFailedError(code_pb2.FAILED_PRECONDITION, str(exc)) from None
        names = []
        for i, version in enumerate(versions):
            resolved, _ = await download_weights(ctx.peers.model, version.name, ctx.scratch() / f"parent-{i}.pth")
            names.append(resolved)
        ctx.data["evomerge.parents"] = names
        ctx.data["evomerge.parent_params"] = dict(versions[0].parameters)
        ctx.data["evomerge.parent_seeds"] = [v.parameters.get("seed", "") for v in versions]
        ctx.data["evomerge.parent_artifact_bytes"] = [v.artifact.size_bytes for v in versions]
        await ctx.save()
        await ctx.log("parents: " + ", ".join(names))
        return ",".join(names)

    async def evolve(self, ctx: PhaseContext) -> str:
        loop = asyncio.get_running_loop()

        def report(fraction: float, message: str, state: dict[str, Any]) -> None:
            async def both() -> None:
                ctx.data["evomerge.state"] = state
                await ctx.save()
                await ctx.log(message)
                await ctx.progress(fraction, message)
            asyncio.run_coroutine_threadsafe(both(), loop).result()

        result = await asyncio.to_thread(self._evolve_blocking, ctx, report)
        ctx.data["evomerge.result"] = result
        await ctx.save()
        best = result["best"]
        return f"{describe(best['recipe'])} val_loss {best['val_loss']:.4f}"

    def _evolve_blocking(self, ctx: PhaseContext, report) -> dict[str, Any]:
        p = ctx.params
        torch.set_num_threads(max(1, ctx.peers.config.torch_threads))
        params = ctx.data["evomerge.parent_params"]
        parents = [load_state(ctx.scratch() / f"parent-{i}.pth") for i in range(len(ctx.data["evomerge.parents"]))]
        base, base_kind = self._base(parents, params, ctx.data["evomerge.parent_seeds"])
        task = heldout_task(int(params["model.context_length"]), p["dataset_path"], tokenizer=tokenizer_of(params))

        def score(state: dict[str, torch.Tensor]) -> float:
            loss = validation_loss(build_decoder(state, params), task)
            return loss if math.isfinite(loss) else math.inf

        state = ctx.data.get("evomerge.state") or {}
        parent_losses = state.get("parent_val_loss") or [score(x) for x in parents]
        methods = tuple(p["methods"])
        n = len(parents)
        if state.get("population"):
            population, start = state["population"], state["generation"]
            history, best = state["history"], state["best"]
        else:
            rng = random.Random(p["seed"])
            population = [random_recipe(rng, methods[i % len(methods)], n) for i in range(p["population"])]
            start, history, best = 0, [], None
        for g in range(start, p["generations"]):
            if ctx.stop.is_set():
                raise StepFailedError(code_pb2.CANCELLED, "cancelled")
            scored = []
            for recipe in population:
                if ctx.stop.is_set():
                    raise StepFailedError(code_pb2.CANCELLED, "cancelled")
                try:
                    loss = score(apply_recipe(parents, base, recipe))
                except merge.MergeError as exc:
                    raise StepFailedError(code_pb2.FAILED_PRECONDITION, f"cannot merge the parents: {exc}") from None
                scored.append((loss, recipe))
            scored.sort(key=lambda x: x[0])
            finite = [x for x, _ in scored if math.isfinite(x)]
            gen_best, gen_mean = scored[0][0], statistics.fmean(finite) if finite else math.inf
            if best is None or gen_best < best["val_loss"]:
                best = {"val_loss": gen_best, "recipe": scored[0][1], "generation": g + 1}
            history.append({"generation": g + 1, "best_val_loss": gen_best, "mean_val_loss": gen_mean,
                            "best_recipe": describe(scored[0][1])})
            rng = random.Random(f"{p['seed']}-{g}")
            elite = [r for _, r in scored[: p["elite"]]]

            def pick() -> dict[str, Any]:
                a, b = rng.sample(scored, 2)
                return (a if a[0] <= b[0] else b)[1]

            children = []
            while len(elite) + len(children) < p["population"]:
                a, b = pick(), pick()
                child = _crossover(rng, a, b) if a["method"] == b["method"] else json.loads(json.dumps(a))
                children.append(_mutate(rng, child, methods))
            population = elite + children
            message = (f"generation {g + 1}/{p['generations']}: best val_loss {gen_best:.4f} "
                       f"({describe(scored[0][1])}), mean {gen_mean:.4f}; best parent {min(parent_losses):.4f}")
            report((g + 1) / p["generations"], message, {
                "generation": g + 1, "population": population, "history": history, "best": best,
                "parent_val_loss": parent_losses})
        assert best is not None
        return {"best": best, "history": history, "parent_val_loss": parent_losses, "base": base_kind}

    @staticmethod
    def _base(parents: list[dict[str, torch.Tensor]], params: dict[str, str],
              seeds: list[str]) -> tuple[dict[str, torch.Tensor], str]:
        if len(set(seeds)) == 1 and seeds[0].isdigit():
            from services.training.engine.model import build_model
            from services.training.engine.spec import ModelSpec

            torch.manual_seed(int(seeds[0]))
            init = build_model(ModelSpec(layers=int(params["model.layers"]), width=int(params["model.width"]),
                                         heads=int(params["model.heads"]),
                                         context_length=int(params["model.context_length"])),
                               int(parents[0]["token_embeddings.weight"].shape[0]), "cognate").state_dict()
            if init.keys() == parents[0].keys() and all(init[k].shape == parents[0][k].shape for k in init):
                return init, f"init(seed={seeds[0]})"
        return merge.merge_state_dicts(parents, lambda k, ts: merge.linear(ts, [1.0] * len(ts))), "mean"

    async def register(self, ctx: PhaseContext) -> str:
        result = ctx.data["evomerge.result"]
        best = result["best"]
        params = ctx.data["evomerge.parent_params"]

        def materialize() -> bytes:
            parents = [load_state(ctx.scratch() / f"parent-{i}.pth")
                       for i in range(len(ctx.data["evomerge.parents"]))]
            base, _ = self._base(parents, params, ctx.data["evomerge.parent_seeds"])
            return state_dict_bytes(apply_recipe(parents, base, best["recipe"]))

        data = await asyncio.to_thread(materialize)
        best_parent = min(result["parent_val_loss"])
        version = mv.ModelVersion(
            description=f"EvoMerge child of {', '.join(ctx.data['evomerge.parents'])}: {describe(best['recipe'])}",
            tags=["evomerge", f"merge-{best['recipe']['method']}"],
            metrics={"val_loss": best["val_loss"], "best_parent_val_loss": best_parent,
                     "val_loss_vs_best_parent": best["val_loss"] / best_parent if best_parent else 0.0,
                     "generation": float(best["generation"])},
            parameters={**{k: v for k, v in params.items() if k.startswith(("architecture", "model.", "task."))},
                        "merge.recipe": json.dumps(best["recipe"], sort_keys=True)[:1024],
                        "merge.method": best["recipe"]["method"], "merge.base": result["base"],
                        "merge.generations": str(ctx.params["generations"]),
                        "merge.population": str(ctx.params["population"]),
                        "heldout": ctx.params["dataset_path"] or "builtin:arithmetic_word_problems@heldout"},
            lineage=mv.Lineage(parent_versions=ctx.data["evomerge.parents"], merge_method=best["recipe"]["method"],
                               phase="phases/evomerge", phase_run=ctx.run.name),
        )
        created = await register_weights(ctx.peers.model, f"models/{ctx.params['model']}", version, data,
                                         ctx.request_id("version"))
        ctx.data["evomerge.version"] = created.name
        await ctx.save()
        ctx.run.outputs.metrics[ctx.metric_key("val_loss")] = best["val_loss"]
        ctx.run.outputs.metrics[ctx.metric_key("best_parent_val_loss")] = best_parent
        await ctx.log(f"registered {created.name}: val_loss {best['val_loss']:.4f} vs best parent {best_parent:.4f}")
        return created.name

    async def set_winner(self, ctx: PhaseContext) -> str:
        version = ctx.data["evomerge.version"]
        resource = await move_alias(ctx, ctx.params["model"], ctx.params["alias"], version)
        ctx.run.outputs.model_version = version
        ctx.run.outputs.artifacts[ctx.artifact_key("winner")] = version
        result = ctx.data["evomerge.result"]
        await ctx.set_output({"version": version, "recipe": result["best"]["recipe"],
                              "val_loss": result["best"]["val_loss"],
                              "best_parent_val_loss": min(result["parent_val_loss"])})
        return resource
