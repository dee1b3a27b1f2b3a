"""Firestore I/O: the only package that imports ``google.*`` or ``grpc``.

- ``connection``: the channel, credentials, call metadata, deadlines, the
  pause after a failure, and the one place Google's errors become keystore's
  (``StoreUnavailable``; ``errors.Refused`` and ``errors.Missing`` for the
  writes Firestore refused).
- ``documents``: key rows and their usage documents; limit documents' leases.
- ``commits``: writes that take effect once, however often they are sent.
- ``values``: Firestore values to and from Python.
- ``listen`` and ``listen_result``: the Listen RPC's stream, and what it holds
  between snapshots.
"""
