"""Shared test helpers: one of each, imported by the suite's fixtures and tests.

- `wait`: `eventually()` (and `eventually_async()`), the one polling loop.
- `cli`: `run_cli()`, the `grid` CLI as a subprocess; `call_cli()`, in-process.
- `brokers`: the suite's own Redis/Valkey servers and the one choice of broker kind.
- `agents`: `AgentProc`, a real `grid-agent` process, and what marks a test `agents`.
- `records`: broker records built through `gridcore.records`, never as hand-written JSON.
- `gates`: `Gate`, a job that blocks until the test creates a file.
- `proxy`: `ReplyDropper`, a TCP proxy to a broker that loses one chosen reply.
"""
