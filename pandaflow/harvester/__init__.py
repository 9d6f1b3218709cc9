"""The harvester: keeps pilots alive on every queue that names a provider (see :mod:`.loop`)."""

from pandaflow.harvester.loop import Harvester, HarvesterConfig, QueueReport

__all__ = ["Harvester", "HarvesterConfig", "QueueReport"]
