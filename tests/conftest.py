"""The four rings of the suite, as pytest markers on every test.

* ``ring1``: sans-IO: plain code and data (wire, routing, parsers,
  certificates, config files); no reactor, no protocol, no socket, no process.
* ``ring2``: in memory and deterministic: Twisted protocols and contexts on a
  fake clock (``yotonnet.testing.MemoryMesh`` and its ``memory:`` endpoints,
  ``StringTransport``); no socket, no process, no real reactor.
* ``ring3``: real sockets and processes on loopback, on the real reactor.
* ``ring4``: real hosts: network namespaces on a bridge (root and iproute2).

``make test-fast`` runs rings 1 and 2 (``pytest -m "ring1 or ring2"``);
``make test`` runs them all. Each module's ring is set in :data:`RINGS`, by
hand: a module missing from it stops the run, so a new module's ring is
chosen rather than guessed. The tests stay trial test cases: nothing here is
a fixture, and trial runs them as before (without markers).
"""

from __future__ import annotations

import pytest

#: module -> its ring, or {test class: ring, "*": the ring of the module's other classes}
RINGS: dict[str, int | dict[str, int]] = {
    # ring 1: sans-IO
    "test_config": 1,
    "test_control_limits": 1,
    "test_core": 1,
    "test_docker": 1,
    "test_kernel_protocol": 1,
    "test_layers": 1,
    "test_localsecret": 1,
    "test_messages": 1,
    "test_iopub_log": 1,
    "test_recent": 1,
    "test_names": 1,
    "test_routing": 1,
    "test_wire": 1,
    "test_yoton": 1,
    # ring 2: in memory, on a fake clock
    "test_memory_channels": 2,
    "test_memory_endpoint": 2,
    "test_leaves": 2,
    "test_memory_links": 2,
    "test_mesh_healing": 2,
    "test_repair": 2,
    "test_record_flood": 2,
    "test_trust": 2,
    "test_display": {"HelloTests": 2, "*": 1},
    "test_flow": {"PeerFlowTests": 1, "*": 2},
    "test_forwarding": {"RunDecoderTests": 1, "*": 2},
    "test_status": {"ParserTests": 1, "*": 2},
    "test_reply_poll": 2,
    "test_reqrep_hotpath": {"CallTableTests": 1, "MeshPathTests": 2, "*": 3},
    # ring 3: real sockets and processes on loopback
    "test_attacks": 3,
    "test_bench_versus": 3,
    "test_blocking": 3,
    "test_control_attacks": 3,
    "test_flow_processes": 3,
    "test_hostile": 3,
    "test_jupyter_frontend": 3,
    "test_jupyter_host": 3,
    "test_kernel": 3,
    "test_kernel_auth": 3,
    "test_kernel_cli": 3,
    "test_leaves_processes": 3,
    "test_limits": 3,
    "test_processes": 3,
    "test_tls": 3,
    "test_twistd": 3,
    "test_yoton_link": 3,
    "test_yoton_processes": 3,
    "test_auth": {
        "Checkers": 1, "PasswdCommand": 1, "PeerWithoutProof": 2, "PlainLogins": 2, "*": 3,
    },
    "test_authz": {"PolicyRules": 1, "*": 3},
    "test_bad_input": {"HelloAndFrameInOneRead": 2, "*": 3},
    "test_certs": {"Certificates": 1, "WriteBundle": 1, "*": 3},
    "test_cli": {"ParserTests": 1, "*": 3},
    "test_costs": {"SplitCostTests": 1, "ConfigTests": 1, "*": 3},
    "test_eager_writes": {"WriteNowTests": 2, "*": 3},
    "test_reads": 3,
    "test_tls_roles": {"ServerAuthProblem": 1, "*": 3},
    "test_web": {"AccessTests": 1, "*": 3},
    # ring 4: network namespaces
    "test_netns_mesh": 4,
    "test_repair_hosts": 4,
    "test_docker_mesh": {"ComposeRewriteTests": 1, "*": 4},
}


def ring_of(item: pytest.Item) -> int:
    """The ring of one collected test, from :data:`RINGS`."""
    module = item.module.__name__.rpartition(".")[2]  # type: ignore[attr-defined]
    try:
        rings = RINGS[module]
    except KeyError:
        raise pytest.UsageError(
            f"tests/{module}.py has no ring: add it to RINGS in tests/conftest.py "
            "(1 sans-IO, 2 in memory, 3 real sockets or processes, 4 network namespaces)"
        ) from None
    if isinstance(rings, int):
        return rings
    for name in rings:
        if name != "*" and not hasattr(item.module, name):  # type: ignore[attr-defined]
            raise pytest.UsageError(
                f"RINGS in tests/conftest.py gives a ring to {module}.{name}, "
                "which that module no longer has"
            )
    cls = item.cls.__name__ if item.cls is not None else "*"  # type: ignore[attr-defined]
    ring = rings.get(cls, rings.get("*"))
    if ring is None:
        raise pytest.UsageError(
            f"{module}.{cls} has no ring: name it, or give a '*' ring, in RINGS in "
            "tests/conftest.py"
        )
    return ring


# First, so that -m selects on these markers (pytest's own deselection runs in this hook).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(f"ring{ring_of(item)}")
