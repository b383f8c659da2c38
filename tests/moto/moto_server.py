"""moto server, with DynamoDB's isolation.

Run as `.venv/bin/python tests/moto/moto_server.py -H 127.0.0.1 -p PORT` (the arguments of moto's own
`moto_server`); the e2e harness (tests/src/lib.rs) and `scripts/dev-env up` start moto this way.

moto serves requests on threads and its DynamoDB backend takes no locks, which real DynamoDB never shows:
- TransactWriteItems applies its actions one by one after taking a deep copy of every table involved, and when
  one fails (a condition that does not hold: a redelivered job's marker, every day) it puts those copies
  back, undoing every other request's write that landed in between: markers, part records, open uploads lost.
- An UpdateItem reads, changes and writes the item in separate Python steps, so two ADDs at once can lose one.
DynamoDB documents single-item writes as atomic and transactions as serializable with every other write. Here
every DynamoDB request is served under one lock, which is what makes moto's answers those of DynamoDB.
"""

import sys
import threading

from moto.dynamodb.responses import DynamoHandler

_lock = threading.RLock()
_call_action = DynamoHandler.call_action


def _serialized(self):
    with _lock:
        return _call_action(self)


DynamoHandler.call_action = _serialized

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
