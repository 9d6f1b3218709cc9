"""The ``pandaflow`` command: run a server or pilots, and follow and control the work.

Read commands talk to a running server over REST (``--server``), or read a database directly
(``--db``) with the same queries the server uses, so no server is needed to look at one.

One module per command group, each adding its commands to the group :func:`main`
(:mod:`.root`): :mod:`.services` (server, pilot), :mod:`.reads` (status, workflows, jobs, job,
logs, pilots, errors, errorcodes), :mod:`.control` (cancel, retry), :mod:`.dags` (submit,
report), :mod:`.run` (run: a DAG file on a server and a pilot of its own) and :mod:`.harvest`
(harvester, workers, queues). :mod:`.sources` finds the data (a server or a database),
:mod:`.output` prints it (tables or ``--json``).
"""

from pandaflow.cli import control, dags, harvest, loops, reads, run, services  # noqa: F401  (they add the commands)
from pandaflow.cli.root import main

__all__ = ["main"]
