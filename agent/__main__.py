import sys

from servertrack.agent.main import main

sys.exit(main())
