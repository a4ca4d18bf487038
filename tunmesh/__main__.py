"""``python -m tunmesh``: the same commands as the ``tunmesh`` console script."""

from tunmesh.cli import main

raise SystemExit(main())
