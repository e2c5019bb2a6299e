import os
import sys

# The rollups take about 5 KB of fresh memory per server as servers appear (1.3 GB for 250,000
# within seconds). With numpy's transparent-hugepage advice, a first touch may wait for the
# kernel to compact memory into huge pages: measured here, 4.1 s against 1.5 s for 250,000 new
# servers' rows, in stalls long enough to hold batches past the 2-s flush rule. NumPy reads this
# variable when it is imported; set it to 1 to keep the advice.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

from servertrack.aggregator.main import main

sys.exit(main())
