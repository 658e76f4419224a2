"""`grid`, the command line. A command imports what it uses and no more (a submit is one short
process among thousands in a shell loop): the modules named in `DEFERRED_BY_CLI` that a
dependency imports anyway wait for their first use."""

from gridcore.lazy import DEFERRED_BY_CLI, defer

for _name in DEFERRED_BY_CLI:
    defer(_name)
