"""Whose slot a worker name is: told by the whole name (node names may hold dots)."""

from agent import slotnames

AGENT = "0123456789ab"


def test_a_slot_name_is_its_nodes_only():
    for name in (slotnames.slot_name("a", AGENT, 3), slotnames.slot_name("a", AGENT, 3, 2)):
        assert slotnames.of_node(name, "a")
    assert not slotnames.of_node(slotnames.slot_name("a.b", AGENT, 0), "a")  # node a.b's slot
    assert slotnames.of_node(slotnames.slot_name("a.b", AGENT, 0), "a.b")
    assert not slotnames.of_node("a.x.0", "a") and not slotnames.of_node("", "a")
