"""parsl test-suite configuration: parsl's own tests run against PandaExecutor.

Used by ``scripts/parsl-tests.sh`` as ``pytest parsl/tests --config tests/parsl_config.py``.
"""

from parsl.config import Config

from pandaflow.executors import PandaExecutor


def fresh_config() -> Config:
    return Config(executors=[PandaExecutor(label="panda", workers=2)], strategy="none")
