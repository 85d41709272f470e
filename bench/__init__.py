"""Streamgroup's throughput and latency benchmarks: scripts run on demand (the tests only smoke-run them).

Why a package: the scenarios share the code that starts private ``redis-server``, sink and
sidecar processes on loopback and stops them again, and ``python -m bench.run`` (from the
repository root) runs every scenario in one go, so that every ratio in its table is computed
from figures measured minutes apart on the same machine. See ``docs/performance.md``.
"""
