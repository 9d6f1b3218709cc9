"""parsl executors backed by pandaflow."""

from pandaflow.executors.panda import PandaExecutor, SubmissionRefused, TaskFailed

__all__ = ["PandaExecutor", "SubmissionRefused", "TaskFailed"]
