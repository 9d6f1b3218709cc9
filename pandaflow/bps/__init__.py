"""Rubin's ``bps`` (lsst-ctrl-bps) on pandaflow: ``wmsServiceClass: pandaflow.bps.PandaflowService``.

Needs the ``bps`` extra (``pip install 'pandaflow[bps]'``). See ``docs/bps.md``.
"""

from pandaflow.bps.service import PandaflowService
from pandaflow.bps.workflow import PandaflowWorkflow

__all__ = ["PandaflowService", "PandaflowWorkflow"]
