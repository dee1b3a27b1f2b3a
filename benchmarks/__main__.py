"""``python -m benchmarks``: run everything, print the table, write the JSON."""

from benchmarks.run import main

raise SystemExit(main())
