"""Shared fixtures: a real MQTT broker on a free loopback port."""

from collections.abc import Iterator

import pytest
from helpers import Broker


@pytest.fixture
def broker() -> Iterator[Broker]:
    instance = Broker()
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
