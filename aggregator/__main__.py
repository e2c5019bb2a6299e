import sys

from servertrack.aggregator.main import main

sys.exit(main())
