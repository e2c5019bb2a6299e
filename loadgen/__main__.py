import sys

from servertrack.loadgen.main import main

sys.exit(main())
