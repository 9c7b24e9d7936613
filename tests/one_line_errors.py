"""Bad input must stop a script with one readable line, and before anything compiles."""

import jax
import pytest


def error_message(function, *args) -> str:
    """The message of the SystemExit that `function(*args)` raises: a failure, on one line, with the script's name."""
    with pytest.raises(SystemExit) as error:
        function(*args)
    message = str(error.value)
    assert error.value.code != 0 and "\n" not in message, message
    assert message.startswith(("sac_n_jax_flax.py: error: ", "sac_n_jax_eqx.py: error: ")), message
    return message


def error_before_compile(function, *args, caplog: pytest.LogCaptureFixture) -> str:
    """error_message, and nothing was compiled on the way (JAX logs every compile with jax.log_compiles)."""
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        message = error_message(function, *args)
    compiles = [record.getMessage() for record in caplog.records if "ompil" in record.getMessage()]
    assert not compiles, f"compiled before failing: {compiles[:3]}"
    return message
