"""Scripts the slot runs by SHA (agent/lua.py): a broker that lost them (restarted, flushed,
failed over) gets them again, and the call still answers."""

from __future__ import annotations

from agent.lua import Lua


def test_a_script_the_broker_forgot_is_loaded_again(r):
    script = Lua("return {KEYS[1], ARGV[1]}")
    assert script(r, ["k"], ["v"]) == [b"k", b"v"]
    r.script_flush()
    assert not r.script_exists(script.sha)[0]
    assert script(r, ["k2"], [3]) == [b"k2", b"3"]
    assert r.script_exists(script.sha)[0]


def test_recorded_commands_run_as_they_were_queued(r):
    from agent import guarded

    pipe = guarded.recorder(r)
    pipe.hset("h", mapping={"é": "ü", "n": 1, "f": 0.5, "b": b"\x00\xff"})
    pipe.rpush("l", "a", b"", 3)
    pipe.incr("h")  # a failing command is reported, and the rest still ran
    run = Lua(guarded.RUN_FN + "return run_recorded(1)")
    errs = guarded.errors(run(r, [], guarded.packed(r, pipe)))
    assert len(errs) == 1 and "WRONGTYPE" in errs[0]
    assert r.hgetall("h") == {"é".encode(): "ü".encode(), b"n": b"1", b"f": b"0.5", b"b": b"\x00\xff"}
    assert r.lrange("l", 0, -1) == [b"a", b"", b"3"]


def test_recorded_arguments_are_what_redis_py_would_send(r):
    import pytest
    from redis.exceptions import DataError

    from agent import guarded

    values = ["text", "é", b"\x00", 0, -7, 2**70, 0.1, -1e300, 1e-7, float("inf")]
    pipe = guarded.recorder(r)
    pipe.rpush("typed", *values)
    pipe.expire("typed", 600)
    run = Lua(guarded.RUN_FN + "return run_recorded(1)")
    assert guarded.errors(run(r, [], guarded.packed(r, pipe))) == []
    encode = r.get_encoder().encode
    assert r.lrange("typed", 0, -1) == [encode(v) for v in values]
    pipe.rpush("typed", True)  # refused as redis-py refuses it, not sent as "True"
    with pytest.raises(DataError):
        guarded.packed(r, pipe)


def test_more_recorded_numbers_than_one_unpack_takes_run_whole(r):
    from agent import guarded

    n = guarded.UNPACK_AT_ONCE  # 1 + n + 3n numbers: several parts of the reader's unpack
    pipe = guarded.recorder(r)
    pipe.set("before", "1")
    for i in range(n):
        pipe.rpush("many", str(i))
    pipe.set("after", b"\x00" * 3)
    run = Lua(guarded.RUN_FN + "return run_recorded(1)")
    assert guarded.errors(run(r, [], guarded.packed(r, pipe))) == []
    assert r.get("before") == b"1" and r.get("after") == b"\x00" * 3
    assert r.lrange("many", 0, -1) == [str(i).encode() for i in range(n)]


def _client_id(r) -> int:
    from agent import lua

    conn = lua._connection(r.connection_pool)  # the connection this thread's scripts run on
    conn.send_command("CLIENT", "ID")
    return conn.read_response()


def test_a_dropped_connection_is_made_again(r):
    script = Lua("return 1")
    assert script(r, [], []) == 1
    first = _client_id(r)
    assert script(r, [], []) == 1 and _client_id(r) == first  # the same connection, call after call
    r.client_kill_filter(_id=first)
    assert script(r, [], []) == 1  # the client's retry policy: reconnect, send again
    assert _client_id(r) != first


def test_each_thread_runs_scripts_on_its_own_connection(r):
    import threading

    ids = []
    t = threading.Thread(target=lambda: ids.append(_client_id(r)))
    t.start()
    t.join()
    assert ids and ids[0] != _client_id(r)


def test_a_forked_child_makes_its_own_connection(r):
    import os

    parent = _client_id(r)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id, never touch the parent's socket
        try:
            os.write(write, str(_client_id(r)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = int(os.read(read, 64) or b"0")
    os.waitpid(pid, 0)
    assert child and child != parent and _client_id(r) == parent


def test_meanwhile_runs_once_while_the_broker_runs_the_script_even_one_it_forgot(r):
    """What a slot does while its start script runs (agent/lua.py `meanwhile`): called once,
    after the script was sent and before its reply is read, also when the broker answered
    NOSCRIPT and the script is sent again."""
    script = Lua("redis.call('SET', KEYS[1], ARGV[1]); return 1")
    seen = []

    def meanwhile() -> None:
        seen.append(r.get("m"))  # another connection: the script it waits on has run or runs now

    for value in ("first", "again"):
        r.script_flush()
        assert script(r, ["m"], [value], meanwhile) == 1
    assert script(r, ["m"], ["loaded"], meanwhile) == 1
    assert len(seen) == 3 and r.get("m") == b"loaded"
