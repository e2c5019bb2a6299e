import sys

from servertrack.loadgen.fleet import main

sys.exit(main())
