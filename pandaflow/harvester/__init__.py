"""The harvester: keeps pilots alive on every queue that names a provider (see :mod:`.loop`)."""

from pandaflow.harvester.config import HarvesterConfig
from pandaflow.harvester.loop import Harvester
from pandaflow.harvester.report import QueueReport

__all__ = ["Harvester", "HarvesterConfig", "QueueReport"]
