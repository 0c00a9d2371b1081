"""homogen.environment: variables changed for a block, then put back exactly."""

import os

import pytest

from homogen.environment import environment


def test_variables_are_set_and_unset_in_the_block_and_restored_after_it_even_on_error(monkeypatch):
    monkeypatch.setenv("HOMOGEN_TEST_SET", "before")
    monkeypatch.delenv("HOMOGEN_TEST_NEW", raising=False)
    monkeypatch.setenv("HOMOGEN_TEST_UNSET", "kept")
    monkeypatch.setenv("HOMOGEN_TEST_OTHER", "untouched")
    with (
        pytest.raises(RuntimeError),
        environment({"HOMOGEN_TEST_SET": "during", "HOMOGEN_TEST_NEW": "1", "HOMOGEN_TEST_UNSET": None}),
    ):
        assert os.environ["HOMOGEN_TEST_SET"] == "during" and os.environ["HOMOGEN_TEST_NEW"] == "1"
        assert "HOMOGEN_TEST_UNSET" not in os.environ and os.environ["HOMOGEN_TEST_OTHER"] == "untouched"
        raise RuntimeError("the block fails")
    assert os.environ["HOMOGEN_TEST_SET"] == "before" and "HOMOGEN_TEST_NEW" not in os.environ
    assert os.environ["HOMOGEN_TEST_UNSET"] == "kept" and os.environ["HOMOGEN_TEST_OTHER"] == "untouched"
