import sys

from servertrack.forward.main import main

sys.exit(main())
