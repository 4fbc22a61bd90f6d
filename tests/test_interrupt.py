"""A Ctrl-C whose KeyboardInterrupt is swallowed (as in a finaliser) still stops the build at the next lap."""

import os
import signal

import pytest

from reportgen import interrupt
from reportgen.timing import Timer


def _swallowed_ctrl_c():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):   # the handler runs at the next bytecode boundary
            pass
    except KeyboardInterrupt:
        pass   # what "Exception ignored in …" amounts to


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_lap():
    timer = Timer()
    with interrupt.handling_ctrl_c():
        timer.lap("before")                      # no Ctrl-C yet: nothing raised
        _swallowed_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            timer.lap("feature_vis", "conv1")
    assert signal.getsignal(signal.SIGINT) is not interrupt._on_sigint   # the previous handler is back


def test_without_ctrl_c_check_is_silent():
    with interrupt.handling_ctrl_c():
        interrupt.check()
