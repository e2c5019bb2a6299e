import sys

from servertrack.receiver.main import main

sys.exit(main())
