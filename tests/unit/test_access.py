"""contract.access: how keys are compared and where they are required."""

import pytest

from contract.access import bearer, check_exposure, is_loopback, key_matches


def test_a_key_matches_only_as_a_bearer_token():
    assert key_matches(bearer("s3cret")["Authorization"], "s3cret")
    assert key_matches("bearer s3cret", "s3cret")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearer"):
        assert not key_matches(header, "s3cret"), header
    assert bearer(None) == {} and bearer("") == {}


def test_only_loopback_may_go_without_a_key():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
        check_exposure(host, None, "the tuner", "set X")
    for host in ("0.0.0.0", "::", "192.168.1.4", "myhost.example"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match=f"--host {host} would open the tuner's control routes.*set X"):
            check_exposure(host, None, "the tuner", "set X")
        check_exposure(host, "k", "the tuner", "set X")  # with a key: allowed
