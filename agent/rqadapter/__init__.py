"""The agent's one adapter to RQ: the only code of the agent that imports `rq`.

    worker.py     GridWorker: the RQ worker of a slot and every override of it (signals, the
                  outage-tolerant idle loop, pop and claim, heartbeats, maintenance, scheduler)
    book.py       RQBook: RQ's own records of a grid attempt (start, end, hand back, refuse,
                  lost), written once, for the slot and for node-loss recovery
    jobs.py       GridJob and GridQueue, and reading a job record without trusting it
    scheduler.py  GridScheduler: RQ's scheduler with the grid's priority order

Every private RQ member used here is named in tests/test_private_api.py, which fails, naming
it, the day an RQ release drops it (rq is pinned to the series tested, ~=3.0.0).
"""
