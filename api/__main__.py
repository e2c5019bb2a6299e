import sys

from servertrack.api.main import main

sys.exit(main())
