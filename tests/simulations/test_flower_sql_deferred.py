"""A Ray run's driver imports Flower's simulation without SQLAlchemy and Alembic (about 1 s of
its start); a database-backed link state or object store still gets Flower's real classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    import simulations.flower_lean as R
    assert R.defer_flower_sql() and R.defer_flower_sql()  # in place, and again a no-op
    import flwr.simulation
    assert "sqlalchemy" not in sys.modules and "alembic" not in sys.modules, "SQL imported"
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager
    assert type(ObjectStoreFactory().store()).__name__ == "InMemoryObjectStore"
    d = tempfile.mkdtemp()
    state = LinkStateFactory(os.path.join(d, "l.db"), NoOpFederationManager(),
                             ObjectStoreFactory(os.path.join(d, "o.db"))).state()
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
    from flwr.supercore.object_store.sql_object_store import SqlObjectStore
    import flwr.server.superlink.linkstate.linkstate_factory as lf
    import flwr.supercore.object_store.object_store_factory as of
    assert isinstance(state, SqlLinkState)
    assert lf.SqlLinkState is SqlLinkState and of.SqlObjectStore is SqlObjectStore
    assert sys.modules["flwr.server.superlink.linkstate"].SqlLinkState is SqlLinkState
    print("ok")
""")


def test_flower_simulation_imports_without_sql_and_a_database_store_still_works():
    got = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr[-2000:]


def test_full_ray_processes_leave_flower_as_it_is():
    script = ("import os, sys; os.environ['FEDTITAN_RAY_PROCESSES'] = 'full'\n"
              "import simulations.flower_lean as R\nassert not R.defer_flower_sql()\n"
              "assert not any(type(m).__name__ == '_DeferredModule' for m in list(sys.modules.values()))\nprint('ok')")
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr[-2000:]
