"""Row shapes -> canonical examples, and the checks every example must pass."""

import pytest

from tuneforge.data.formats import RowReader
from tuneforge.data.validate import check_example
from tuneforge.errors import RowError
from tuneforge.recipe import SourceSpec

CHAT = [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "It ships tomorrow."}]


def example(row, system_prompt=None, **spec):
    return RowReader(SourceSpec(path="x.jsonl", **spec), system_prompt, None).example(row)


@pytest.mark.parametrize("row, fmt", [
    ({"messages": CHAT}, "messages"),
    ({"conversations": [{"from": "human", "value": "Where is my order?"}, {"from": "gpt", "value": "It ships tomorrow."}]},
     "sharegpt"),
    ({"prompt": "Where is my order?", "completion": "It ships tomorrow."}, "prompt_completion"),
    ({"question": "Where is my order?", "answer": "It ships tomorrow."}, "prompt_completion"),
    ({"instruction": "Where is my order?", "input": "", "output": "It ships tomorrow."}, "alpaca"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Where is my order?"}]},
                   {"role": "assistant", "content": "It ships tomorrow."}]}, "messages"),
])
def test_every_chat_shape_becomes_the_same_example(row, fmt):
    detected, out = example(row)
    assert detected == fmt
    assert out == {"id": None, "messages": CHAT}


def test_alpaca_input_system_and_recipe_system_prompt():
    _, out = example({"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "system": "Be exact."})
    assert out["messages"] == [{"role": "system", "content": "Be exact."},
                               {"role": "user", "content": "Translate.\n\nBonjour"},
                               {"role": "assistant", "content": "Hello"}]
    _, out = example({"prompt": "Hi", "completion": "Hello"}, system_prompt="You are Acme support.")
    assert out["messages"][0] == {"role": "system", "content": "You are Acme support."}


def test_preference_pairs_keep_the_rejected_answer():
    fmt, out = example({"prompt": "Where is my order?", "chosen": "It ships tomorrow.", "rejected": "No idea."})
    assert fmt == "preference" and out["messages"] == CHAT and out["rejected"] == "No idea."
    fmt, out = example({"chosen": CHAT, "rejected": [CHAT[0], {"role": "assistant", "content": "No idea."}]})
    assert out["messages"] == CHAT and out["rejected"] == "No idea."


def test_column_mapping_roles_ids_and_text():
    _, out = example({"ticket": 7, "q": "Where is my order?", "a": "It ships tomorrow."},
                     columns={"prompt": "q", "completion": "a", "id": "ticket"})
    assert out == {"id": "7", "messages": CHAT}
    _, out = example({"messages": [{"role": "customer", "content": "Where is my order?"},
                                   {"role": "agent", "content": "It ships tomorrow."}]},
                     roles={"customer": "user", "agent": "assistant"})
    assert out["messages"] == CHAT
    assert example({"body": "Some text."}, format="text", columns={"text": "body"})[1] == {"id": None, "text": "Some text."}


def test_undetectable_rows_list_columns_and_a_mapping_that_works():
    with pytest.raises(RowError) as e:
        example({"ticket": 1, "customer_message": "Hi", "agent_reply": "Hello"})
    assert "found columns ['agent_reply', 'customer_message', 'ticket']" in str(e.value)
    assert "columns: {prompt: customer_message, completion: agent_reply}" in str(e.value)


@pytest.mark.parametrize("row, message", [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
     "`conversations[1].from` is 'robot', not a known role"),
    ({"prompt": "Hi", "completion": 3}, "`completion` must be a string, got int"),
    ({"prompt": "Hi", "completion": "  "}, "`completion` is empty"),
    ({"messages": "hello"}, "`messages` must be a non-empty list"),
    ({"messages": [["user", "Hi"]]}, "`messages[0]` must be an object"),
    ({"messages": [{"role": ["user"], "content": "Hi"}]}, "`messages[0].role` is ['user'], not a known role"),
])
def test_bad_rows_name_the_field(row, message):
    with pytest.raises(RowError, match=None) as e:
        example(row)
    assert message in str(e.value)


@pytest.mark.parametrize("roles, message", [
    (["user"], "ends with a user turn"),
    (["assistant", "user", "assistant"], "`messages[0].role` is 'assistant' but 'user' was expected"),
    (["user", "user", "assistant"], "`messages[1].role` is 'user' but 'assistant' was expected"),
    (["user", "system", "assistant"], "only the first turn may be one"),
    (["system"], "has only a system turn"),
])
def test_role_order_is_checked(roles, message):
    messages = [{"role": r, "content": "x"} for r in roles]
    with pytest.raises(RowError) as e:
        check_example({"id": "1", "messages": messages}, 1000)
    assert message in str(e.value)


def test_empty_turns_and_over_long_rows_are_invalid():
    with pytest.raises(RowError, match="`messages\\[1\\].content` is empty"):
        check_example({"id": "1", "messages": [CHAT[0], {"role": "assistant", "content": " \n"}]}, 1000)
    with pytest.raises(RowError, match="more than data.max_row_chars"):
        check_example({"id": "1", "text": "x" * 101}, 100)
    check_example({"id": "1", "messages": [{"role": "system", "content": "s"}] + CHAT}, 1000)
