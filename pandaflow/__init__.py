"""pandaflow: a workload management system (job server, pilots, harvester) with a parsl front door."""

__version__ = "0.1.0"
