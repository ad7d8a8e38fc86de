"""`python -m cliptool.bench`."""

from cliptool.bench.main import main

raise SystemExit(main())
