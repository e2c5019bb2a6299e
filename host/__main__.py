import sys

from servertrack.host.cli import main

sys.exit(main())
