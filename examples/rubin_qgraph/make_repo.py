# make_repo.py ROOT
import getpass
import os
import sys

import numpy
from lsst.daf.butler import Butler
from lsst.pipe.base.tests.simpleQGraph import (
    makeSimpleButler,
    makeSimplePipeline,
    makeSimpleQGraph,
    populateButler,
)

if len(sys.argv) != 2:
    sys.exit("usage: python make_repo.py ROOT   (ROOT: a new or empty directory for the repository)")
root = os.path.abspath(sys.argv[1])
if os.path.exists(root) and not (os.path.isdir(root) and not os.listdir(root)):
    sys.exit(f"make_repo.py: {root} exists and is not an empty directory: name a new one")
pipeline = makeSimplePipeline(3)                      # task0 -> task1 -> task2 (AddTask)
butler = makeSimpleButler(root, run="inputs", inMemory=False)
populateButler(pipeline, butler)                      # add_dataset0 for detector 0 in 'inputs'
butler.registry.insertDimensionData("detector", {"instrument": "INSTR", "id": 1, "full_name": "det1"})
butler.put(numpy.array([1.0, 2.0]), "add_dataset0", run="inputs", instrument="INSTR", detector=1)
butler.close()

butler = Butler.from_config(root, collections=["inputs"])
_, qgraph = makeSimpleQGraph(
    pipeline=pipeline, butler=butler, callPopulateButler=False,
    run=f"u/{getpass.getuser()}/demo/graph",           # any run but the inputs' (bps renames it)
    makeDatastoreRecords=True,                         # run-qbb reads the inputs through them
    metadata={"input": ["inputs"], "output": f"u/{getpass.getuser()}/demo"},
)  # fmt: skip
butler.close()
qgraph.saveUri(f"{root}/demo.qg")                      # .qg: the format aggregate-graph reads
print(f"butler repository {root}: add_dataset0 of detectors 0 and 1 in run 'inputs'")
print(f"quantum graph {root}/demo.qg: {len(qgraph)} quanta (task0, task1, task2 for each detector)")
