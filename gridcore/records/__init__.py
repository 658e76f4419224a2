"""Every record that crosses the broker (this package: base.py, jobs.py, nodes.py, streams.py, history.py): one class each, its encoding, and a bounded,
validating decoding.

Whoever can write to the broker can write any of these, so a decoding checks the size before
it parses, then the shape and every field's type and range, and raises one `CorruptRecord`
naming the key and the field. Unknown fields are ignored (a newer agent may add some while
nodes are upgraded one at a time); missing optional ones take their defaults.

Where each record lives (keys in gridcore/keys.py) and its wire form:

| record        | key                                   | form                                  |
|---------------|---------------------------------------|---------------------------------------|
| `SignedEnvelope` | the RQ job's single argument       | {"envelope": JSON text, "sig", "kid"} |
| `Envelope`    | inside it (the signed text)           | JSON object                           |
| `SecretEnv`   | `gridsecret:env:<id>` (not the viewer's) | JSON text whose digest the envelope signs |
| `JobMeta`     | `rq:job:<id>` field `meta`            | JSON object                           |
| `ActiveEntry` | `grid:active` field `<id>`            | JSON object                           |
| `Attempt`     | `grid:attempts:<id>` list items       | JSON object                           |
| `Result`      | `grid:result:<id>`                    | JSON object (an Attempt and more)     |
| `CancelProof` | `grid:cancel:<id>` (or "1": unsigned) | JSON object                           |
| `HeldEntry`   | `grid:node:<n>:held` field `<id>`     | JSON object, also read by Lua         |
| `NodeRecord`  | `grid:node:<n>` hash                  | fields below; inventory/load JSON     |
| `GroupRecord` | `grid:group:<id>` hash                | fields below                          |
| `EventEntry`  | `grid:events` stream entries          | t, kind, job, node, msg               |
| `FinishedEntry` | `grid:history` stream entries       | one field `r`: JSON object            |
| `OutputEntry`, `EndMarker` | `grid:out:<id>` stream entries | one-letter fields, below        |
| `RunningEntry`| `grid:node:<n>:running` field `<id>`  | "claim:<worker>", "<slot>", "ended:<worker>" |

Output stream entry fields (one letter: there are millions of these):
    s     what the entry is: "o" stdout bytes, "e" stderr bytes, "n" a note from the grid
          (plain text), "x" the end marker
    d     the bytes (o, e, n)
    at    o, e: bytes of the attempt's output (stdout and stderr together, as they arrived)
          before this entry's; a reader that finds an entry starting past where the one
          before it ended knows exactly how many bytes the broker did not keep
    ln    o, e: newlines in that output before this entry (the lines left out, likewise)
    code  end marker: exit code, "" when killed by a signal or never started
    sig   end marker: signal number, "" when none
    reason, kind   end marker: why it failed (plain words) and the reason kind, "" when none
"""

from gridcore.records.base import CorruptRecord, JsonRecord, REASON_KINDS, lenient, salvage, text
from gridcore.records.jobs import (
    ActiveEntry, Attempt, AttemptProof, CLAIM, CancelProof, ENDED, ENVELOPE_VERSION, ENVELOPE_VERSIONS_RUN, Envelope, HeldEntry, JobMeta, OWNER_FN, Placement, Result, ResourcesRecord, RunningEntry, SecretEnv, SignedEnvelope, Usage,
)
from gridcore.records.history import FinishedEntry
from gridcore.records.nodes import (
    GpuRecord, GroupRecord, Inventory, Load, NODE_DRAINING, NODE_FIELDS, NODE_SLOTS, NodeRecord,
)
from gridcore.records.streams import (
    EndMarker, EventEntry, Gaps, OUTPUT_ENTRY_MAX, OUTPUT_KINDS, OutputEntry, decode_output,
)

__all__ = [
    "ActiveEntry",
    "Attempt",
    "AttemptProof",
    "CLAIM",
    "CancelProof",
    "CorruptRecord",
    "ENDED",
    "ENVELOPE_VERSION",
    "ENVELOPE_VERSIONS_RUN",
    "EndMarker",
    "Envelope",
    "EventEntry",
    "FinishedEntry",
    "Gaps",
    "GpuRecord",
    "GroupRecord",
    "HeldEntry",
    "Inventory",
    "JobMeta",
    "JsonRecord",
    "Load",
    "NODE_DRAINING",
    "NODE_FIELDS",
    "NODE_SLOTS",
    "NodeRecord",
    "OUTPUT_ENTRY_MAX",
    "OUTPUT_KINDS",
    "OWNER_FN",
    "OutputEntry",
    "Placement",
    "REASON_KINDS",
    "ResourcesRecord",
    "Result",
    "RunningEntry",
    "SecretEnv",
    "SignedEnvelope",
    "Usage",
    "decode_output",
    "lenient",
    "salvage",
    "text",
]
