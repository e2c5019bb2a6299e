import sys

from servertrack.aggregator.hugepages import without_hugepage_advice

without_hugepage_advice()  # before numpy is imported (by main)

from servertrack.aggregator.main import main  # noqa: E402

sys.exit(main())
