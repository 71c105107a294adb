"""Fixtures over the generated contracts: the descriptor set Envoy loads and the Python modules."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "gen" / "descriptor" / "agentforge.binpb"


def import_all_generated() -> list[str]:
    """Import every generated agentforge module; returns their names."""
    import agentforge

    names = []
    for mod in pkgutil.walk_packages(agentforge.__path__, "agentforge."):
        importlib.import_module(mod.name)
        names.append(mod.name)
    return names


@pytest.fixture(scope="session")
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())


@pytest.fixture(scope="session")
def our_files(descriptor_set) -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in descriptor_set.file if f.package.startswith("agentforge.")]


@pytest.fixture(scope="session")
def pool():
    import_all_generated()
    return descriptor_pool.Default()


@pytest.fixture(scope="session")
def services(pool, our_files):
    """Every service descriptor of ours, from the runtime pool."""
    out = []
    for f in our_files:
        fd = pool.FindFileByName(f.name)
        out.extend(fd.services_by_name.values())
    return out


def message_class(desc):
    return message_factory.GetMessageClass(desc)
