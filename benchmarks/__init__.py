"""Benchmarks of keystore against baselines measured in the same run.

    .venv/bin/python -m benchmarks           # about 3.5 minutes, prints one table
    .venv/bin/python -m benchmarks --quick   # about 1 minute, checks the harness

Everything talks to a Firestore emulator of its own (through emulator.sh); the
HTTP figures come from three uvicorn apps on one CPU with wrk on the other:

* keystore: the demo app, ``api.main:app``;
* floor (floor_app.py): the same shape, its key check a set lookup: what FastAPI
  allows at best;
* sketch (sketch_app.py): the design as first drawn, a synchronous Firestore get
  behind ``cachetools.cached`` inside an ``async def`` dependency.

Results also go to benchmarks/results/latest.json (git-ignored).

    .venv/bin/python -m benchmarks.modes     # about 5 minutes: the three sync modes

compares KEYSTORE_SYNC=ttl, reload and listen over 10,000 keys with the sketch and
the PyPI package fastapi-simple-security (see modes.py); results in
benchmarks/results/modes.json.
"""
