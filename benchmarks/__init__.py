"""keystore's benchmarks: ``python -m benchmarks [--quick]``; see README.md."""
